//! One call at one worker, accounted exactly once. Whichever way the call
//! ends (served, failed, timed out, abandoned by the client, or dropped with
//! its request), the telemetry, the worker's circuit breaker and the tenant's
//! limits each see it once, and its span is ended with how it went: the
//! guard is consumed by the ending, and its `Drop` accounts a call that
//! nobody ended.

use std::sync::Arc;

use routemesh_proto::v1::Usage;
use routemesh_telemetry::{Outcome, RequestRecord};
use tokio::time::Instant;
use tonic::{Code, Status};

use super::state::GatewayState;
use super::trace;
use crate::pool::{InFlight, Verdict, WorkerHandle};
use crate::tenancy::limits::Reservation;

/// A call in progress at `worker`.
pub(crate) struct CallGuard {
    state: Arc<GatewayState>,
    worker: Arc<WorkerHandle>,
    tenant: String,
    started: Instant,
    /// The request's deadline is the gateway's whole `request_timeout`: only
    /// then does running out of time say something about the worker.
    full_budget: bool,
    /// Counts the call against the worker and holds its breaker permit;
    /// released when the call is accounted.
    in_flight: Option<InFlight>,
    /// A cascade's follow-up call: its tokens are not the request's counterfactual.
    follow_up: bool,
    /// What the request holds of its tenant's limits; the call's usage is
    /// counted against it.
    reservation: Reservation,
    /// The call failed and the request moves on to another worker: an
    /// attempt, not the client's request (see `RequestRecord::failed_over`).
    failed_over: bool,
    /// The call's client span (`chat {model}`), ended with the call.
    span: tracing::Span,
}

impl CallGuard {
    pub(crate) fn begin(
        state: Arc<GatewayState>,
        worker: Arc<WorkerHandle>,
        in_flight: InFlight,
        tenant: &str,
        full_budget: bool,
        reservation: Reservation,
        span: tracing::Span,
    ) -> Self {
        Self {
            state,
            worker,
            tenant: tenant.to_string(),
            started: Instant::now(),
            full_budget,
            in_flight: Some(in_flight),
            follow_up: false,
            reservation,
            failed_over: false,
            span,
        }
    }

    /// Marks a cascade's follow-up call (see `RequestRecord::follow_up`).
    pub(crate) fn follow_up(mut self, follow_up: bool) -> Self {
        self.follow_up = follow_up;
        self
    }

    /// Marks a failed call after which the request moves on to another
    /// worker, so that its request is counted once, on the call that ends it.
    pub(crate) fn failed_over(mut self, failed_over: bool) -> Self {
        self.failed_over = failed_over;
        self
    }

    pub(crate) fn worker(&self) -> &Arc<WorkerHandle> {
        &self.worker
    }

    /// The call's span, which a relayed stream runs in.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// The worker answered in full (`finish_reason`: the wire enum's value).
    pub(crate) fn served(mut self, usage: Option<&Usage>, finish_reason: i32) {
        self.settle(Outcome::Ok, usage, Verdict::Served, |span| {
            trace::call_served(span, usage, finish_reason);
        });
        if let Some(usage) = usage {
            self.charge(usage);
        }
    }

    /// The call failed before its answer was complete. Returns the status
    /// normalised: a broken connection reads as UNAVAILABLE.
    pub(crate) fn failed(mut self, status: Status) -> Status {
        let status = connection_lost(status);
        if status.code() == Code::Unavailable {
            // Unreachable or draining: no traffic until a load check says otherwise.
            self.worker
                .mark_unhealthy(|| format!("a call failed with UNAVAILABLE: {}", status.message()));
        }
        self.settle(
            outcome_of(&status),
            None,
            worker_fault(&status, self.full_budget),
            |span| trace::call_failed(span, &status),
        );
        status
    }

    /// The request's deadline passed while waiting on the worker.
    pub(crate) fn timed_out(mut self) {
        let verdict = if self.full_budget {
            Verdict::Failed
        } else {
            Verdict::NoSignal
        };
        self.settle(Outcome::Timeout, None, verdict, |span| {
            trace::call_failed(
                span,
                &Status::deadline_exceeded("the request's deadline passed"),
            );
        });
    }

    /// The client went away (or stopped reading) mid-answer; `generated` is
    /// what the worker produced until then, charged to the tenant.
    pub(crate) fn client_gone(mut self, generated: Usage) {
        self.settle(
            Outcome::Cancelled,
            Some(&generated),
            Verdict::NoSignal,
            |span| {
                trace::call_failed(span, &Status::cancelled("the client went away"));
            },
        );
        self.charge(&generated);
    }

    fn settle(
        &mut self,
        outcome: Outcome,
        usage: Option<&Usage>,
        verdict: Verdict,
        end_span: impl FnOnce(&tracing::Span),
    ) {
        if self.in_flight.take().is_none() {
            return;
        }
        self.record(outcome, usage);
        self.worker.report(verdict);
        end_span(&self.span);
    }

    /// Records the call in telemetry and metrics, off the request path.
    fn record(&self, outcome: Outcome, usage: Option<&Usage>) {
        let state = &self.state;
        let worker = &self.worker;
        let elapsed_ms = self.started.elapsed().as_secs_f64() * 1000.0;
        let usage = usage.cloned().unwrap_or_default();
        if outcome == Outcome::Ok {
            state.cost_targets.observe(&self.tenant, usage.cost_usd);
        }
        let record = RequestRecord {
            at_ms: routemesh_telemetry::record::now_ms(),
            tenant: self.tenant.clone(),
            model: worker.record.model.clone(),
            worker_id: worker.record.id.clone(),
            outcome,
            // Measured at the gateway: what the client sees, queueing included.
            ttft_ms: if outcome == Outcome::Ok {
                usage.time_to_first_token_ms.max(0.0) + (elapsed_ms - usage.total_time_ms).max(0.0)
            } else {
                0.0
            },
            total_ms: elapsed_ms,
            prompt_tokens: usage.prompt_tokens,
            completion_tokens: usage.completion_tokens,
            cost_usd: usage.cost_usd,
            follow_up: self.follow_up,
            failed_over: self.failed_over,
        };
        // What the same tokens would have cost on the pool's strongest model
        // (a follow-up's request was counted on its first answer).
        let counterfactual = if self.follow_up {
            0.0
        } else {
            crate::pool::strongest(&state.pool.snapshot()).map_or(0.0, |spec| {
                spec.prices()
                    .cost_usd(usage.prompt_tokens, usage.completion_tokens)
            })
        };
        worker.counters.call(outcome_label(outcome));
        crate::metrics::worker_call(
            &self.tenant,
            &worker.record.model,
            outcome_label(outcome),
            crate::metrics::CallFigures {
                took: self.started.elapsed(),
                ttft_s: Some(record.ttft_ms / 1000.0),
                time_per_output_token_s: record.time_per_output_token_ms().map(|ms| ms / 1000.0),
                tokens: Some((usage.prompt_tokens, usage.completion_tokens)),
                cost_usd: usage.cost_usd,
                counterfactual_usd: counterfactual,
            },
        );
        state.recorder.record(record);
    }

    /// Counts what the call consumed against the request's reservation
    /// (settled with the tenant's limits when the request ends).
    fn charge(&self, usage: &Usage) {
        let tokens = u64::from(usage.prompt_tokens) + u64::from(usage.completion_tokens);
        self.reservation.charge(tokens, usage.cost_usd);
    }
}

impl Drop for CallGuard {
    /// A call nobody ended: its request was dropped (a unary client hung up,
    /// or the server shut down) while the worker was answering.
    fn drop(&mut self) {
        self.settle(Outcome::Cancelled, None, Verdict::NoSignal, |span| {
            trace::call_failed(span, &Status::cancelled("the request was dropped"));
        });
    }
}

fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Ok => "ok",
        Outcome::WorkerError => "worker_error",
        Outcome::Timeout => "timeout",
        Outcome::Overloaded => "overloaded",
        Outcome::Cancelled => "cancelled",
    }
}

/// How a failed call is counted in telemetry.
fn outcome_of(status: &Status) -> Outcome {
    match status.code() {
        Code::DeadlineExceeded => Outcome::Timeout,
        Code::Cancelled => Outcome::Cancelled,
        Code::ResourceExhausted => Outcome::Overloaded,
        _ => Outcome::WorkerError,
    }
}

/// What a failed call says about the worker, for its circuit breaker: the
/// worker's own failures count; the client's bad input and mere load (full)
/// say nothing about its health. A deadline counts only when it was the
/// gateway's own (`full_budget`): a client's shorter one says nothing about
/// the worker, and counting it would let one client with tiny deadlines open
/// every breaker.
fn worker_fault(status: &Status, full_budget: bool) -> Verdict {
    match status.code() {
        Code::Unavailable
        | Code::Internal
        | Code::Unknown
        | Code::DataLoss
        | Code::Unimplemented => Verdict::Failed,
        Code::DeadlineExceeded if full_budget => Verdict::Failed,
        _ => Verdict::NoSignal,
    }
}

/// Our workers never answer UNKNOWN or CANCELLED themselves: from a worker
/// call those codes mean the connection broke (the worker died or the network
/// failed), which for the client is UNAVAILABLE. (A deadline that passed is
/// caught by the gateway's own timer before the call's result is read.)
pub(crate) fn connection_lost(status: Status) -> Status {
    if matches!(status.code(), Code::Unknown | Code::Cancelled) {
        Status::unavailable(format!(
            "connection to the worker lost ({})",
            status.message()
        ))
    } else {
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_workers_own_failures_count_against_its_breaker() {
        for code in [Code::Unavailable, Code::Internal, Code::Unknown] {
            assert_eq!(worker_fault(&Status::new(code, ""), false), Verdict::Failed);
        }
        // Load, the client's bad input, and a deadline the client shortened
        // say nothing about the worker.
        for code in [
            Code::ResourceExhausted,
            Code::InvalidArgument,
            Code::Cancelled,
        ] {
            assert_eq!(
                worker_fault(&Status::new(code, ""), true),
                Verdict::NoSignal
            );
        }
        let deadline = Status::deadline_exceeded("");
        assert_eq!(worker_fault(&deadline, false), Verdict::NoSignal);
        assert_eq!(worker_fault(&deadline, true), Verdict::Failed);
    }

    #[test]
    fn a_broken_connection_reads_as_unavailable() {
        for code in [Code::Unknown, Code::Cancelled] {
            assert_eq!(
                connection_lost(Status::new(code, "h2 reset")).code(),
                Code::Unavailable
            );
        }
        assert_eq!(
            connection_lost(Status::internal("engine")).code(),
            Code::Internal
        );
    }
}
