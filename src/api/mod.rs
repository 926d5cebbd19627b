//! Wire formats the gateway speaks to clients: the OpenAI Chat Completions request head it needs to
//! route (model, stream), the nesting-depth guard for hostile JSON, and the response objects the
//! gateway builds itself (model list, mock completions).

pub mod openai;

pub use openai::{ChatRequest, JsonDepthError};
