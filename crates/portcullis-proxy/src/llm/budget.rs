//! LLM token budgets: a call reserves its worst case in every budget of its policy that
//! applies to the model, before the provider is called; the reservations are settled
//! from the usage the provider reports when the exchange ends (the disconnect and error
//! paths included: [`BudgetHold`] settles on drop).
//!
//! The worst case is the request body's size in bytes (a tokenizer never makes more
//! tokens than the UTF-8 bytes of the text it reads, and the JSON around the text outweighs
//! the chat template's few tokens per message) plus `max_tokens`. A call that names no
//! `max_tokens` gets the budget's `defaultMaxTokens`, lowered to what the consumer has
//! left.

use std::sync::Arc;

use portcullis_api::BudgetCount;
use portcullis_api::push::QuotaShape;
use portcullis_policy::Principal;
use portcullis_policy::quota::Quotas;
use serde_json::Value;

use crate::pipeline::quota::{QuotaHeaders, token_headers};
use crate::quota::{QuotaClient, Refusal, Reserve, Ticket};

/// The reservations of one call, settled once: with its usage; with nothing when the
/// provider was never called or answered an error; with the whole reservation when the
/// provider answered but its usage is unknown (a provider that reports none, a stream
/// abandoned past the drain limits): closed by default, an unmetered call is charged its
/// worst case, never nothing.
pub(crate) struct BudgetHold {
    client: Arc<QuotaClient>,
    quotas: Arc<Quotas>,
    tickets: Vec<(usize, Ticket)>,
    usage: Settle,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Settle {
    /// No answer from the provider: nothing used.
    Nothing,
    /// Input and output tokens as reported.
    Used(u64, u64),
    /// An answer without usage: charge what was reserved.
    Reserved,
    /// A cut-short answer: what was reported, and no less than what was reserved.
    AtLeastReserved(u64, u64),
}

impl BudgetHold {
    /// Records what the call used (none reported: `0, 0`); `complete` is false when the
    /// answer was cut short (a stream abandoned past the drain limits, broken or timed
    /// out), so the provider may have produced more than it reported. The reservations are
    /// settled when the hold drops.
    pub(crate) fn used(&mut self, input: u64, output: u64, complete: bool) {
        // A real call always reads some input: zero of both means the usage is unknown.
        self.usage = if input == 0 && output == 0 {
            Settle::Reserved
        } else if !complete {
            Settle::AtLeastReserved(input, output)
        } else {
            Settle::Used(input, output)
        };
    }

    /// The provider was called and may have done the work, but its answer could not be
    /// read (a timeout, a body over the limit): charged the reservation.
    pub(crate) fn unread(&mut self) {
        self.usage = Settle::Reserved;
    }
}

impl Drop for BudgetHold {
    fn drop(&mut self) {
        for (i, t) in self.tickets.drain(..) {
            let b = &self.quotas.budgets[i];
            let charge = match self.usage {
                Settle::Nothing => 0,
                Settle::Used(input, output) => b.charge(input, output),
                Settle::Reserved => t.reserved,
                Settle::AtLeastReserved(input, output) => b.charge(input, output).max(t.reserved),
            };
            self.client
                .settle(t, charge, &b.common.policy, &b.common.name);
        }
    }
}

/// What admission decided.
pub(crate) struct Admitted {
    /// Settles the reservations.
    pub(crate) hold: BudgetHold,
    /// The `max_tokens` to set on a call that named none.
    pub(crate) max_tokens: Option<u64>,
    /// `x-ratelimit-*-tokens` of the tightest budget.
    pub(crate) headers: QuotaHeaders,
}

/// A refused call: which budget, why, and the headers to answer with.
pub(crate) struct Refused {
    pub(crate) budget: String,
    pub(crate) refusal: Refusal,
    pub(crate) headers: QuotaHeaders,
}

/// The `max_tokens` the client asked for: `Ok(None)` when it named none, `Err` with the
/// field when one is not a non-negative integer.
pub(crate) fn asked_max_tokens(req: &Value) -> Result<Option<u64>, &'static str> {
    for field in ["max_completion_tokens", "max_tokens"] {
        match req.get(field) {
            None | Some(Value::Null) => {}
            Some(v) => return v.as_u64().map(Some).ok_or(field),
        }
    }
    Ok(None)
}

/// `n`, the number of choices asked for: 1 when absent; `Err` unless an integer from 1 to
/// 128 (OpenAI's bounds).
pub(crate) fn choices(req: &Value) -> Result<u64, &'static str> {
    match req.get("n") {
        None | Some(Value::Null) => Ok(1),
        Some(v) => v.as_u64().filter(|n| (1..=128).contains(n)).ok_or("n"),
    }
}

/// Reserves the call's worst case in every budget of `quotas` that applies to `model`.
#[allow(clippy::too_many_arguments)] // each is one fact of the call
pub(crate) async fn admit(
    client: &Arc<QuotaClient>,
    quotas: &Arc<Quotas>,
    model: &str,
    principal: Option<&Principal>,
    labels: &crate::metrics::ConsumerLabels,
    prompt_bytes: u64,
    asked: Option<u64>,
    choices: u64,
    has_output: bool,
    now: i64,
) -> Result<Option<Admitted>, Refused> {
    let mut hold = BudgetHold {
        client: client.clone(),
        quotas: quotas.clone(),
        tickets: Vec::new(),
        usage: Settle::Nothing,
    };
    let mut max_tokens: Option<u64> = None;
    let mut tightest: Option<(u64, u64, u64)> = None;
    for (i, b) in quotas.budgets.iter().enumerate() {
        if !b.applies_to(model) {
            continue;
        }
        let q = &b.common;
        let Some(consumer) = q.identity(principal) else {
            return Err(Refused {
                budget: q.name.to_string(),
                refusal: client.no_identity(q, "budget"),
                headers: Vec::new(),
            });
        };
        let limit = q.limit_for(consumer);
        let (start, end) = b.window.bounds(now);
        let input = if b.count == BudgetCount::Output {
            0
        } else {
            prompt_bytes
        };
        // `n` choices each up to max_tokens.
        let (out_min, out_max) = match (b.count, has_output, asked) {
            (BudgetCount::Input, _, _) | (_, false, _) => (0, 0),
            (_, true, Some(n)) => (n.saturating_mul(choices), n.saturating_mul(choices)),
            (_, true, None) => (
                choices,
                max_tokens
                    .unwrap_or(b.default_max_tokens)
                    .saturating_mul(choices),
            ),
        };
        let reserved = client
            .reserve(Reserve {
                quota: q,
                kind: "budget",
                consumer,
                labels,
                window: start,
                shape: QuotaShape::Budget { end },
                limit,
                // Saturating: a client's max_tokens of u64::MAX must reserve everything,
                // never wrap around to a small number.
                min: input.saturating_add(out_min),
                max: input.saturating_add(out_max),
            })
            .await;
        match reserved {
            Ok(t) => {
                if has_output && asked.is_none() && b.count != BudgetCount::Input {
                    let fits = (t.reserved - input) / choices;
                    max_tokens = Some(max_tokens.map_or(fits, |m| m.min(fits)));
                }
                if tightest.is_none_or(|(_, r, _)| t.remaining < r) {
                    tightest = Some((t.limit, t.remaining, t.reset_in));
                }
                hold.tickets.push((i, t));
            }
            Err(refusal) => {
                let mut headers = QuotaHeaders::new();
                token_headers(&mut headers, limit, refusal.remaining, refusal.retry_after);
                // `hold` drops here: what was reserved in other budgets goes back.
                return Err(Refused {
                    budget: q.name.to_string(),
                    refusal,
                    headers,
                });
            }
        }
    }
    if hold.tickets.is_empty() {
        return Ok(None);
    }
    let mut headers = QuotaHeaders::new();
    if let Some((limit, remaining, reset)) = tightest {
        token_headers(&mut headers, limit, remaining, reset);
    }
    Ok(Some(Admitted {
        hold,
        max_tokens,
        headers,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A budget of 1000 tokens a day per subject, on an in-process ledger.
    struct Fixture {
        client: Arc<QuotaClient>,
        quotas: Arc<Quotas>,
        labels: crate::metrics::ConsumerLabels,
        principal: Principal,
    }

    impl Fixture {
        fn new(subject: &str) -> Self {
            let budget: portcullis_api::LlmBudgetSpec = serde_json::from_value(serde_json::json!({
                "name": "b", "key": "subject", "tokens": 1000, "window": "day"
            }))
            .unwrap();
            let mut principal = Principal::new(portcullis_policy::PrincipalKind::Jwt, i64::MAX);
            principal.subject = Some(subject.into());
            Self {
                client: Arc::new(QuotaClient::new(
                    Arc::new(crate::quota::LocalLedger::default()),
                    &prometheus::Registry::new(),
                )),
                quotas: Arc::new(
                    portcullis_policy::quota::compile_quotas("ns/p", &[budget], &[]).unwrap(),
                ),
                labels: crate::metrics::ConsumerLabels::new(8),
                principal,
            }
        }

        /// A call with a 100-byte prompt asking for `asked` tokens.
        async fn admit(&self, asked: u64) -> Result<Option<Admitted>, Refused> {
            admit(
                &self.client,
                &self.quotas,
                "m",
                Some(&self.principal),
                &self.labels,
                100,
                Some(asked),
                1,
                true,
                1_800_000_000,
            )
            .await
        }

        async fn admitted(&self, asked: u64) -> Admitted {
            self.admit(asked).await.ok().flatten().unwrap()
        }
    }

    /// A provider that reports no usage (or a stream abandoned past the drain limits)
    /// is charged the reservation: an unmetered call must not be free.
    #[tokio::test]
    async fn an_answer_without_usage_is_charged_its_reservation() {
        let f = Fixture::new("alice");
        // Unknown usage: the 400 reserved stay spent.
        let mut a = f.admitted(300).await;
        a.hold.used(0, 0, true);
        drop(a);
        // Known usage: 10 + 5 spent, the rest comes back.
        let mut a = f.admitted(300).await;
        a.hold.used(10, 5, true);
        drop(a);
        // Never answered: all of it comes back.
        drop(f.admitted(300).await);
        // 1000 - 400 - 15 = 585 left: a call of 585 fits, 586 does not.
        assert!(f.admit(486).await.is_err());
        assert!(f.admit(485).await.ok().flatten().is_some());
    }

    /// Found in review: an Anthropic stream cut short reports its input (and the output so
    /// far) at message_start, so it was charged as if complete; and an answer that could
    /// not be read was refunded although the provider did the work.
    #[tokio::test]
    async fn a_cut_short_or_unread_answer_is_charged_at_least_its_reservation() {
        let f = Fixture::new("bob");
        let mut a = f.admitted(300).await;
        a.hold.used(50, 1, false);
        drop(a);
        let mut a = f.admitted(300).await;
        a.hold.unread();
        drop(a);
        // 1000 - 400 - 400 = 200 left.
        assert!(f.admit(101).await.is_err());
        assert!(f.admit(100).await.ok().flatten().is_some());
    }

    #[test]
    fn max_tokens_is_read_from_either_field_and_must_be_a_count() {
        assert_eq!(asked_max_tokens(&serde_json::json!({})), Ok(None));
        assert_eq!(
            asked_max_tokens(&serde_json::json!({"max_tokens": 5})),
            Ok(Some(5))
        );
        assert_eq!(
            asked_max_tokens(&serde_json::json!({"max_completion_tokens": 7, "max_tokens": 5})),
            Ok(Some(7))
        );
        assert_eq!(
            asked_max_tokens(&serde_json::json!({"max_tokens": -1})),
            Err("max_tokens")
        );
        assert_eq!(
            asked_max_tokens(&serde_json::json!({"max_completion_tokens": "9"})),
            Err("max_completion_tokens")
        );
    }
}
