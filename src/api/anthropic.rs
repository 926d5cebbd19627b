//! Anthropic Messages as a client API: the model list shapes the anthropic SDK expects.

use serde::Serialize;

#[derive(Serialize)]
pub struct ModelInfo<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub id: &'a str,
    pub display_name: &'a str,
    /// RFC 3339.
    pub created_at: &'a str,
}

#[derive(Serialize)]
pub struct ModelPage<'a> {
    pub data: Vec<ModelInfo<'a>>,
    pub has_more: bool,
    pub first_id: Option<&'a str>,
    pub last_id: Option<&'a str>,
}
