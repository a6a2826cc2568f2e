//! The helpers the modules used before the typed ones, kept while the modules
//! move over one by one; removed when the last has.

use serde_json::Value;

use super::WAIT;

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Sse {
    pub id: i64,
    pub event: String,
    pub data: Value,
}

/// Opens a job's event stream on the server at `base`.
pub async fn open_stream_at(
    client: &reqwest::Client,
    base: &str,
    id: &str,
    last: Option<&str>,
) -> reqwest::Response {
    let mut req = client.get(format!("{base}/v1/jobs/{id}/events"));
    if let Some(l) = last {
        req = req.header("Last-Event-ID", l);
    }
    req.send().await.expect("stream request sent")
}

/// Reads SSE events with a real parser until the server ends the stream.
pub async fn read_to_end(resp: reqwest::Response) -> Vec<Sse> {
    use eventsource_stream::Eventsource;
    use futures::StreamExt;
    assert_eq!(resp.status(), 200, "stream opens");
    let mut events = resp.bytes_stream().eventsource();
    let mut out = Vec::new();
    loop {
        match tokio::time::timeout(WAIT, events.next()).await {
            Ok(Some(Ok(ev))) => out.push(Sse {
                id: ev.id.parse().expect("numeric id"),
                event: ev.event,
                data: serde_json::from_str(&ev.data).expect("data is one line of JSON"),
            }),
            Ok(Some(Err(e))) => panic!("stream error: {e}"),
            Ok(None) => return out,
            Err(_) => panic!("stream did not end within {WAIT:?}; got {out:?}"),
        }
    }
}

pub fn ids(events: &[Sse]) -> Vec<i64> {
    events.iter().map(|e| e.id).collect()
}
