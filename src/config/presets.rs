//! Presets of `type = "openai"` providers: the OpenAI-compatible services and local servers the
//! gateway knows, each a table of defaults (base URL, whether a key is needed, and the settings
//! that cover its differences from OpenAI). A preset only fills keys the config leaves out: every
//! value it sets can be overridden in the provider's table. Sources: each service's own
//! OpenAI-compatibility documentation.

use super::limits::{MaxTokensField, ToolCallIdFormat};

/// A named OpenAI-compatible service or server (`providers.<name>.preset`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Preset {
    Groq,
    Mistral,
    DeepSeek,
    Xai,
    OpenRouter,
    Together,
    Fireworks,
    Cerebras,
    Perplexity,
    Ollama,
    Vllm,
    LmStudio,
}

/// What a preset sets when the provider's table does not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PresetDefaults {
    /// `base_url`.
    pub base_url: &'static str,
    /// Whether `keys` must be given (local servers run without one).
    pub keys_required: bool,
    /// `max_tokens_field`.
    pub max_tokens_field: MaxTokensField,
    /// `stream_usage`: whether `stream_options.include_usage` may be sent.
    pub stream_usage: bool,
    /// `tool_call_id_format`.
    pub tool_call_id_format: ToolCallIdFormat,
    /// `tools_supported`.
    pub tools_supported: bool,
    /// `parallel_tool_calls_supported`.
    pub parallel_tool_calls_supported: bool,
    /// `reasoning_content_history`.
    pub reasoning_content_history: bool,
    /// `responses`: whether the service documents OpenAI's Responses API at `base_url`.
    pub responses: bool,
}

/// OpenAI's own behaviour: what every preset starts from.
const OPENAI_LIKE: PresetDefaults = PresetDefaults {
    base_url: "",
    keys_required: true,
    max_tokens_field: MaxTokensField::MaxCompletionTokens,
    stream_usage: true,
    tool_call_id_format: ToolCallIdFormat::Any,
    tools_supported: true,
    parallel_tool_calls_supported: true,
    reasoning_content_history: false,
    responses: true,
};

/// A service or server without a documented Responses API: Responses clients are translated to
/// its Chat Completions.
const CHAT_ONLY: PresetDefaults = PresetDefaults {
    responses: false,
    ..OPENAI_LIKE
};

/// Every preset by its config name, in the order the README lists them.
pub const PRESETS: [(&str, Preset); 12] = [
    ("groq", Preset::Groq),
    ("mistral", Preset::Mistral),
    ("deepseek", Preset::DeepSeek),
    ("xai", Preset::Xai),
    ("openrouter", Preset::OpenRouter),
    ("together", Preset::Together),
    ("fireworks", Preset::Fireworks),
    ("cerebras", Preset::Cerebras),
    ("perplexity", Preset::Perplexity),
    ("ollama", Preset::Ollama),
    ("vllm", Preset::Vllm),
    ("lmstudio", Preset::LmStudio),
];

impl Preset {
    /// The preset named `name` in the config.
    pub fn parse(name: &str) -> Option<Preset> {
        PRESETS.iter().find(|(n, _)| *n == name).map(|(_, p)| *p)
    }

    /// Its config name.
    pub fn name(self) -> &'static str {
        PRESETS
            .iter()
            .find(|(_, p)| *p == self)
            .map_or("", |(n, _)| n)
    }

    pub fn defaults(self) -> PresetDefaults {
        // Groq, xAI, OpenRouter and Fireworks document a Responses API at their base URL; the
        // others (local servers included: theirs is partial and depends on the release) are
        // given Responses clients by translation.
        let (d, c) = (OPENAI_LIKE, CHAT_ONLY);
        match self {
            // Takes `max_completion_tokens` and `stream_options`; refuses `logprobs`,
            // `logit_bias`, `messages[].name` and n > 1 (never sent by a translated request).
            Preset::Groq => PresetDefaults {
                base_url: "https://api.groq.com/openai/v1",
                ..d
            },
            // Refuses unknown fields (422 "Extra inputs are not permitted"): no
            // `max_completion_tokens`, no `stream_options` (its streams carry usage anyway);
            // tool-call ids must be 9 letters or digits.
            Preset::Mistral => PresetDefaults {
                base_url: "https://api.mistral.ai/v1",
                max_tokens_field: MaxTokensField::MaxTokens,
                stream_usage: false,
                tool_call_id_format: ToolCallIdFormat::Alphanumeric9,
                ..c
            },
            // `https://api.deepseek.com` serves `/chat/completions` (`/v1` is an optional
            // alias). Thinking mode with tools needs the assistant turns' `reasoning_content`
            // sent back (400 otherwise).
            Preset::DeepSeek => PresetDefaults {
                base_url: "https://api.deepseek.com",
                max_tokens_field: MaxTokensField::MaxTokens,
                reasoning_content_history: true,
                ..c
            },
            Preset::Xai => PresetDefaults {
                base_url: "https://api.x.ai/v1",
                ..d
            },
            // Takes `max_tokens`; usage always comes in the last chunk. Attribution headers
            // (`HTTP-Referer`, `X-Title`) go in `headers`.
            Preset::OpenRouter => PresetDefaults {
                base_url: "https://openrouter.ai/api/v1",
                max_tokens_field: MaxTokensField::MaxTokens,
                ..d
            },
            Preset::Together => PresetDefaults {
                base_url: "https://api.together.xyz/v1",
                max_tokens_field: MaxTokensField::MaxTokens,
                ..c
            },
            Preset::Fireworks => PresetDefaults {
                base_url: "https://api.fireworks.ai/inference/v1",
                max_tokens_field: MaxTokensField::MaxTokens,
                ..d
            },
            // Refuses `parallel_tool_calls` (400), as well as `frequency_penalty`,
            // `presence_penalty` and `logit_bias` (never sent by a translated request).
            Preset::Cerebras => PresetDefaults {
                base_url: "https://api.cerebras.ai/v1",
                parallel_tool_calls_supported: false,
                ..c
            },
            // No `/v1` in its path; no tool calling; usage comes in its stream chunks.
            Preset::Perplexity => PresetDefaults {
                base_url: "https://api.perplexity.ai",
                max_tokens_field: MaxTokensField::MaxTokens,
                stream_usage: false,
                tools_supported: false,
                ..c
            },
            // Local servers: no key needed (one is sent if configured).
            Preset::Ollama => PresetDefaults {
                base_url: "http://127.0.0.1:11434/v1",
                keys_required: false,
                max_tokens_field: MaxTokensField::MaxTokens,
                ..c
            },
            Preset::Vllm => PresetDefaults {
                base_url: "http://127.0.0.1:8000/v1",
                keys_required: false,
                ..c
            },
            Preset::LmStudio => PresetDefaults {
                base_url: "http://127.0.0.1:1234/v1",
                keys_required: false,
                max_tokens_field: MaxTokensField::MaxTokens,
                ..c
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_preset_has_a_name_and_a_base_url_without_a_trailing_slash() {
        for (name, preset) in PRESETS {
            assert_eq!(Preset::parse(name), Some(preset));
            assert_eq!(preset.name(), name);
            let url = preset.defaults().base_url;
            assert!(
                url.starts_with("http") && !url.ends_with('/'),
                "{name}: {url}"
            );
        }
        assert_eq!(Preset::parse("openai"), None);
    }

    #[test]
    fn only_services_with_a_documented_responses_api_get_responses_clients_passed_through() {
        let with: Vec<&str> = PRESETS
            .iter()
            .filter(|(_, p)| p.defaults().responses)
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(with, ["groq", "xai", "openrouter", "fireworks"]);
    }
}
