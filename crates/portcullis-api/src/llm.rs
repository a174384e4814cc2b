//! LLM backends of an `ApiRoute` (`spec.backend.llm`) and prompt templates of its rules
//! (`spec.rules[].prompt`): the AI gateway's resources.

use std::collections::BTreeMap;

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use crate::token_policy::SecretKeyRef;

/// An LLM provider behind the route. Clients call the OpenAI API (`POST
/// .../chat/completions`, `POST .../embeddings`, `GET .../models`) or, on `anthropic`
/// backends, the Anthropic Messages API (`POST .../messages`) with their Portcullis token;
/// the gateway checks the token's model scopes, swaps the token for a provider key from
/// `credentials`, translates between the two APIs when they differ, and meters the tokens
/// the provider reports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LlmBackend {
    /// The provider's API: `openai`, `anthropic`, or `openaiCompatible` (vLLM, Ollama,
    /// Mistral, Groq, DeepSeek, Together, Azure-style endpoints: anything speaking the
    /// OpenAI API).
    pub provider: LlmProvider,

    /// The API's base URL, as an SDK's `base_url` (usually ending in `/v1`): the gateway
    /// calls `<url>/chat/completions`, `<url>/embeddings`, `<url>/models` and
    /// `<url>/messages`. Defaults to `https://api.openai.com/v1` for `openai` and
    /// `https://api.anthropic.com/v1` for `anthropic`; required for `openaiCompatible`.
    #[schemars(length(max = 2048))]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("backend.llm.url must start with http:// or https://")
    )]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,

    /// A query string added to every provider call, e.g. `api-version=2024-10-21` for
    /// Azure OpenAI.
    #[schemars(length(max = 512))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,

    /// The header the provider key is sent in: `authorization` (`Bearer <key>`, the
    /// default for the OpenAI family), `x-api-key` (the default for `anthropic`) or
    /// `api-key` (Azure OpenAI).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_header: Option<LlmKeyHeader>,

    /// The provider keys: a pool. The lowest `priority` is used first, keys of equal
    /// priority in turn; a key the provider answers 401 or 429 with is taken out of
    /// rotation for `cooldown` (for a 429's `Retry-After` when it gives one, up to 10
    /// minutes) and the call is retried once with the next key. At least one.
    #[schemars(length(min = 1, max = 32))]
    pub credentials: Vec<LlmCredential>,

    /// How long a key refused by the provider stays out of rotation (default `60s`) when
    /// the provider does not say (`Retry-After`).
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new(crate::token_policy::DURATION_RULE).message("cooldown must be a positive duration such as 30s or 5m"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown: Option<String>,

    /// The models clients may ask for, by the name they use. A request for any other model
    /// is answered 404; `GET .../models` lists those the caller's token may use.
    #[schemars(length(min = 1, max = 256))]
    pub models: Vec<LlmModel>,

    /// Most bytes of a request body read (default 4 MiB); a larger one is answered 413.
    #[schemars(range(min = 1024, max = 67108864))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_request_bytes: Option<u32>,
}

/// The API an LLM backend speaks.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum LlmProvider {
    /// OpenAI (`https://api.openai.com/v1`).
    Openai,
    /// Anthropic (`https://api.anthropic.com/v1`): OpenAI calls are translated to the
    /// Messages API and back.
    Anthropic,
    /// Any server speaking the OpenAI API at `url`.
    OpenaiCompatible,
}

/// The header a provider key travels in.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum LlmKeyHeader {
    /// `Authorization: Bearer <key>`.
    Authorization,
    /// `x-api-key: <key>`.
    XApiKey,
    /// `api-key: <key>`.
    ApiKey,
}

/// One provider key, from a Secret of the route's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LlmCredential {
    /// The Secret and key holding the provider key.
    pub secret_ref: SecretKeyRef,
    /// Lower is tried first (default 0); keys of equal priority take turns.
    #[schemars(range(min = 0, max = 1000))]
    #[serde(default)]
    pub priority: u32,
}

/// A model clients may ask for.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct LlmModel {
    /// The name clients use (`"model"` in their requests).
    #[schemars(length(min = 1, max = 256))]
    pub name: String,
    /// The name sent to the provider (default: `name`).
    #[schemars(length(max = 256))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_model: Option<String>,
    /// The token scope that grants the model (default `model:<name>`). A token holding
    /// `model:*` is granted every model whose scope starts with `model:`.
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[!#-\\\\[\\\\]-~]+$')").message("scope must be one word of printable characters without spaces, quotes or backslashes, e.g. model:gpt-4o"))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

/// A prompt served as a REST endpoint: `POST` to the rule's path with the variables as a
/// JSON object; the gateway checks them against `variables`, renders `messages` and calls
/// the route's LLM backend, answering with an OpenAI `chat.completion`.
///
/// Variables are only allowed in `user` messages, and each is inserted as a JSON string
/// literal (quoted and escaped), never raw: a value cannot close the template's text or
/// reach the system prompt.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PromptTemplate {
    /// The model (a `models[].name` of the backend); the caller's token needs its scope.
    #[schemars(length(min = 1, max = 256))]
    pub model: String,
    /// The conversation, in order. `{{name}}` in a `user` message is replaced by the
    /// variable `name`, JSON-encoded.
    #[schemars(length(min = 1, max = 64))]
    pub messages: Vec<PromptMessage>,
    /// The variables: a JSON Schema of `type: object` (the subset below).
    #[serde(default)]
    pub variables: PromptVariables,
    /// `max_tokens` of the call.
    #[schemars(range(min = 1, max = 1000000))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// `temperature` of the call, as a decimal string (`"0.2"`).
    #[schemars(length(max = 8))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<String>,
}

/// One message of a prompt template.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct PromptMessage {
    /// `system`, `user` or `assistant`. Only `user` messages may hold `{{variables}}`.
    pub role: PromptRole,
    /// The text.
    #[schemars(length(max = 65536))]
    pub content: String,
}

/// Who says a prompt message.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PromptRole {
    /// The system prompt: fixed text.
    System,
    /// The user turn: may hold variables.
    User,
    /// An assistant turn (few-shot examples): fixed text.
    Assistant,
}

/// The variables of a prompt, as a JSON Schema object (a subset: `properties` of scalar
/// types, `required`, no other properties allowed).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PromptVariables {
    /// Always `object`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<ObjectType>,
    /// The variables, by name (letters, digits, `_`).
    #[schemars(length(max = 64))]
    #[serde(default)]
    pub properties: BTreeMap<String, VariableSchema>,
    /// Variables that must be given.
    #[schemars(length(max = 64), inner(length(max = 64)))]
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required: Vec<String>,
}

/// The JSON Schema type `object`.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum ObjectType {
    /// A JSON object.
    Object,
}

/// The JSON Schema of one variable.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VariableSchema {
    /// `string` (the default), `integer`, `number` or `boolean`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub type_: Option<VariableType>,
    /// What the variable is, for the OpenAPI document.
    #[schemars(length(max = 1024))]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The allowed values (strings only).
    #[schemars(length(max = 256), inner(length(max = 1024)))]
    #[serde(default, rename = "enum", skip_serializing_if = "Vec::is_empty")]
    pub enum_: Vec<String>,
    /// Most characters of a string (default and upper bound 100000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<u32>,
    /// Fewest characters of a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_length: Option<u32>,
    /// Smallest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimum: Option<f64>,
    /// Largest number allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maximum: Option<f64>,
}

/// The JSON Schema type of a variable.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum VariableType {
    /// A JSON string.
    #[default]
    String,
    /// A JSON number without a fraction.
    Integer,
    /// A JSON number.
    Number,
    /// `true` or `false`.
    Boolean,
}

impl VariableType {
    /// The JSON Schema name.
    pub fn as_str(self) -> &'static str {
        match self {
            VariableType::String => "string",
            VariableType::Integer => "integer",
            VariableType::Number => "number",
            VariableType::Boolean => "boolean",
        }
    }
}
