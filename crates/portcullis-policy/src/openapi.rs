//! The OpenAPI 3.1 document of the AI gateway: every LLM route's API paths and every
//! prompt endpoint, with the scopes each model needs. Served on the admin port as
//! `/openapi.json` and printed by `portcullis openapi --manifests DIR`.

use portcullis_api::{ApiRoute, LlmProvider, PromptRole, RouteRule, VariableSchema};
use serde_json::{Map, Value, json};

/// The document for `routes` (those that compiled), in the order given.
pub fn document(routes: &[&ApiRoute]) -> Value {
    let mut paths = Map::new();
    for r in routes {
        let Some(llm) = &r.spec.backend.llm else {
            continue;
        };
        let id = format!(
            "{}/{}",
            r.metadata.namespace.as_deref().unwrap_or("default"),
            r.metadata.name.as_deref().unwrap_or("")
        );
        let models: Vec<&str> = llm.models.iter().map(|m| m.name.as_str()).collect();
        let scopes: Vec<String> = llm
            .models
            .iter()
            .map(|m| {
                m.scope
                    .clone()
                    .unwrap_or_else(|| format!("model:{}", m.name))
            })
            .collect();
        let ext = |op: &mut Map<String, Value>| {
            op.insert("x-portcullis-route".into(), id.clone().into());
            op.insert("x-portcullis-hosts".into(), json!(r.spec.hosts));
        };
        for rule in &r.spec.rules {
            if let Some(p) = &rule.prompt {
                let Some(path) = rule_path(rule) else {
                    continue;
                };
                let scope = llm
                    .models
                    .iter()
                    .find(|m| m.name == p.model)
                    .map(|m| {
                        m.scope
                            .clone()
                            .unwrap_or_else(|| format!("model:{}", m.name))
                    })
                    .unwrap_or_default();
                let mut op = Map::new();
                op.insert(
                    "summary".into(),
                    format!("Prompt on model {}", p.model).into(),
                );
                if let Some(system) = p.messages.iter().find(|m| m.role == PromptRole::System) {
                    op.insert("description".into(), system.content.clone().into());
                }
                op.insert(
                    "requestBody".into(),
                    json!({"required": true, "content": {"application/json": {"schema": variables_schema(&p.variables)}}}),
                );
                op.insert("responses".into(), chat_responses());
                op.insert("security".into(), json!([{"bearer": [scope]}]));
                ext(&mut op);
                add(&mut paths, &path, "post", op);
                continue;
            }
            let Some((base, prefix)) = rule_base(rule) else {
                continue;
            };
            let mut ops: Vec<(&str, &str, &str)> = vec![
                ("/chat/completions", "post", "Chat completion (OpenAI API)"),
                ("/models", "get", "Models this token may use"),
                (
                    "/models/{model}",
                    "get",
                    "One model, if this token may use it",
                ),
            ];
            if llm.provider == LlmProvider::Anthropic {
                ops.push(("/messages", "post", "Messages (Anthropic API)"));
            } else {
                ops.push(("/embeddings", "post", "Embeddings (OpenAI API)"));
            }
            for (suffix, method, summary) in ops {
                let path = if prefix {
                    // As `LlmRoute::endpoint`: one path per endpoint.
                    let base = base.trim_end_matches('/');
                    if base.ends_with("/v1") {
                        format!("{base}{suffix}")
                    } else {
                        format!("{base}/v1{suffix}")
                    }
                } else if base.ends_with(suffix) {
                    base.clone()
                } else {
                    continue;
                };
                if !rule.matches.methods.is_empty()
                    && !rule
                        .matches
                        .methods
                        .iter()
                        .any(|m| m.eq_ignore_ascii_case(method))
                {
                    continue;
                }
                let mut op = Map::new();
                op.insert("summary".into(), summary.into());
                if method == "post" {
                    op.insert(
                        "requestBody".into(),
                        json!({"required": true, "content": {"application/json": {"schema": {
                            "type": "object",
                            "required": ["model"],
                            "properties": {"model": {"type": "string", "enum": models}},
                        }}}}),
                    );
                }
                op.insert(
                    "responses".into(),
                    if suffix == "/chat/completions" {
                        chat_responses()
                    } else {
                        json!({"200": {"description": "OK", "content": {"application/json": {}}}})
                    },
                );
                op.insert(
                    "security".into(),
                    json!([{"bearer": if method == "get" { Vec::new() } else { scopes.clone() }}]),
                );
                ext(&mut op);
                add(&mut paths, &path, method, op);
            }
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Portcullis AI gateway",
            "version": "v1",
            "description": "LLM routes and prompt endpoints. Call with a Portcullis token: `Authorization: Bearer <token>`. A model needs its scope (model:<name>, or model:*); the scopes listed per operation are alternatives, one per model.",
        },
        "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "paths": Value::Object(paths),
    })
}

fn add(paths: &mut Map<String, Value>, path: &str, method: &str, op: Map<String, Value>) {
    let entry = paths
        .entry(path.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = entry {
        m.entry(method.to_owned()).or_insert(Value::Object(op));
    }
}

fn rule_path(rule: &RouteRule) -> Option<String> {
    rule.matches
        .path
        .clone()
        .or_else(|| rule.matches.path_prefix.clone())
}

/// The rule's path and whether it is a prefix.
fn rule_base(rule: &RouteRule) -> Option<(String, bool)> {
    match (&rule.matches.path, &rule.matches.path_prefix) {
        (Some(p), None) => Some((p.clone(), false)),
        (None, Some(p)) => Some((p.clone(), true)),
        _ => None,
    }
}

fn chat_responses() -> Value {
    json!({
        "200": {"description": "An OpenAI chat.completion (or, with stream: true, chat.completion.chunk server-sent events)", "content": {"application/json": {"schema": {"type": "object", "properties": {
            "id": {"type": "string"}, "object": {"type": "string"}, "model": {"type": "string"},
            "choices": {"type": "array"}, "usage": {"type": "object"}}}}}},
        "400": {"description": "Bad request (in the API's error format)"},
        "401": {"description": "No valid token"},
        "403": {"description": "The token lacks the model's scope (insufficient_scope)"},
        "404": {"description": "Unknown model"},
    })
}

fn variables_schema(v: &portcullis_api::PromptVariables) -> Value {
    let mut props = Map::new();
    for (name, s) in &v.properties {
        props.insert(name.clone(), variable_schema(s));
    }
    json!({"type": "object", "additionalProperties": false, "required": v.required, "properties": props})
}

fn variable_schema(s: &VariableSchema) -> Value {
    let mut m = Map::new();
    m.insert("type".into(), s.type_.unwrap_or_default().as_str().into());
    if let Some(d) = &s.description {
        m.insert("description".into(), d.clone().into());
    }
    if !s.enum_.is_empty() {
        m.insert("enum".into(), json!(s.enum_));
    }
    if let Some(n) = s.max_length {
        m.insert("maxLength".into(), n.into());
    }
    if let Some(n) = s.min_length {
        m.insert("minLength".into(), n.into());
    }
    if let Some(n) = s.minimum {
        m.insert("minimum".into(), n.into());
    }
    if let Some(n) = s.maximum {
        m.insert("maximum".into(), n.into());
    }
    Value::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llm_routes_and_prompts_are_described() {
        let r: ApiRoute = serde_yaml::from_str(
            r#"
apiVersion: portcullis.dev/v1alpha1
kind: ApiRoute
metadata: {name: llm, namespace: ai}
spec:
  hosts: [llm.example.com]
  policyRef: {name: p}
  backend:
    llm:
      provider: openaiCompatible
      url: http://vllm:8000/v1
      credentials: [{secretRef: {name: k, key: a}}]
      models: [{name: small}, {name: big, scope: tier:premium}]
  rules:
    - match: {pathPrefix: /v1}
    - match: {path: /prompts/sum, methods: [POST]}
      prompt:
        model: small
        messages: [{role: system, content: Sum up.}, {role: user, content: "{{text}}"}]
        variables: {type: object, required: [text], properties: {text: {type: string, maxLength: 50}}}
"#,
        )
        .unwrap();
        let plain: ApiRoute = serde_yaml::from_str(
            "metadata: {name: x}\nspec: {hosts: [a], policyRef: {name: p}, backend: {url: 'http://a'}, rules: [{match: {pathPrefix: /}}]}",
        )
        .unwrap();
        let doc = document(&[&r, &plain]);
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        // Only the LLM route's paths; the plain route is not part of the AI gateway.
        let mut keys: Vec<&str> = paths.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "/prompts/sum",
                "/v1/chat/completions",
                "/v1/embeddings",
                "/v1/models",
                "/v1/models/{model}"
            ]
        );
        let chat = &paths["/v1/chat/completions"]["post"];
        assert_eq!(
            chat["requestBody"]["content"]["application/json"]["schema"]["properties"]["model"]["enum"],
            json!(["small", "big"])
        );
        assert_eq!(
            chat["security"],
            json!([{"bearer": ["model:small", "tier:premium"]}])
        );
        assert_eq!(chat["x-portcullis-route"], "ai/llm");
        let prompt = &paths["/prompts/sum"]["post"];
        let schema = &prompt["requestBody"]["content"]["application/json"]["schema"];
        assert_eq!(schema["required"], json!(["text"]));
        assert_eq!(schema["properties"]["text"]["maxLength"], 50);
        assert_eq!(schema["additionalProperties"], false);
        assert_eq!(prompt["security"], json!([{"bearer": ["model:small"]}]));
        assert_eq!(prompt["description"], "Sum up.");
    }
}
