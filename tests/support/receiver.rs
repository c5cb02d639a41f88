//! A real local webhook receiver: an axum server on a fixed loopback port
//! that records every POST (headers, body, when it arrived), answers as
//! told (2xx, an error status with `Retry-After`, or after a delay), and
//! can be stopped and started again on the same port (a receiver down).

#![allow(dead_code)]

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

/// One POST as received.
#[derive(Debug, Clone)]
pub struct Received {
    pub at: Instant,
    pub signature: String,
    pub delivery: String,
    pub body: Vec<u8>,
    pub json: Value,
}

/// How the receiver answers.
#[derive(Debug, Clone, Copy)]
pub enum Answer {
    Ok,
    /// This status, with `Retry-After: secs` when given.
    Fail(u16, Option<u64>),
    /// 200 after this delay.
    Slow(Duration),
}

#[derive(Default)]
struct State {
    received: Vec<Received>,
    answer: Option<Answer>,
    /// Answers to give first, one per request, before `answer`.
    script: std::collections::VecDeque<Answer>,
}

pub struct Receiver {
    pub port: u16,
    state: Arc<Mutex<State>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<Mutex<State>>>,
    headers: HeaderMap,
    body: Bytes,
) -> axum::response::Response {
    let answer = {
        let mut s = state.lock().unwrap();
        let answer = s.script.pop_front().or(s.answer).unwrap_or(Answer::Ok);
        let header = |n: &str| {
            headers
                .get(n)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        s.received.push(Received {
            at: Instant::now(),
            signature: header("rolebridge-signature"),
            delivery: header("rolebridge-delivery-id"),
            json: serde_json::from_slice(&body).unwrap_or(Value::Null),
            body: body.to_vec(),
        });
        answer
    };
    match answer {
        Answer::Ok => StatusCode::OK.into_response(),
        Answer::Slow(d) => {
            tokio::time::sleep(d).await;
            StatusCode::OK.into_response()
        }
        Answer::Fail(status, retry) => {
            let status = StatusCode::from_u16(status).unwrap();
            match retry {
                Some(s) => (status, [("retry-after", s.to_string())]).into_response(),
                None => status.into_response(),
            }
        }
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut r = Receiver {
            port,
            state: Arc::default(),
            server: None,
        };
        r.serve(listener);
        r
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let router = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(self.state.clone());
        self.server = Some(tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        }));
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    /// Closes the port: deliveries are refused at connect.
    pub async fn stop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
            let _ = h.await;
        }
    }

    /// Listens on the same port again.
    pub async fn restart(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await {
                Ok(l) => return self.serve(l),
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.port),
            }
        }
    }

    pub fn answer(&self, a: Answer) {
        self.state.lock().unwrap().answer = Some(a);
    }

    /// Answers for the next requests, in order, before the standing one.
    pub fn script(&self, answers: &[Answer]) {
        self.state
            .lock()
            .unwrap()
            .script
            .extend(answers.iter().copied());
    }

    pub fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// Every event received, in order of receipt (repeats included).
    pub fn events(&self) -> Vec<Value> {
        self.received()
            .iter()
            .flat_map(|r| r.json["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }

    /// Waits until `pred` holds for the events received, or panics after
    /// `timeout` with what arrived.
    pub async fn wait_for(&self, timeout: Duration, pred: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events();
            if pred(&events) {
                return events;
            }
            if Instant::now() > deadline {
                panic!(
                    "receiver: condition not met in {timeout:?}; {} event(s) received: {}",
                    events.len(),
                    serde_json::to_string(&events).unwrap()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if let Some(h) = self.server.take() {
            h.abort();
        }
    }
}

/// Checks what a receiver must be able to rely on: per user, the events'
/// cursors only grow in order of first receipt, and no event was received
/// twice unless `allow_repeats` (a crash between a send and its record).
pub fn assert_per_user_order(events: &[Value], allow_repeats: bool) {
    let mut seen = std::collections::HashSet::new();
    let mut last: std::collections::HashMap<String, i64> = Default::default();
    for e in events {
        let id = e["id"].as_str().unwrap().to_string();
        if !seen.insert(id.clone()) {
            assert!(allow_repeats, "event {id} received twice");
            continue;
        }
        let user = e["user"]["id"].as_str().unwrap().to_string();
        let cursor = e["cursor"].as_i64().unwrap();
        if let Some(prev) = last.insert(user.clone(), cursor) {
            assert!(
                cursor > prev,
                "user {user}: event {cursor} arrived after {prev}"
            );
        }
    }
}
