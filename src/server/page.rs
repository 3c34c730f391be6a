//! `GET /status`: the status as a page a person can watch during a start-up. Plain
//! HTML that refreshes itself every two seconds; no JavaScript.

use std::fmt::Write;

use serde_json::Value;

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A value as text (`-` for none).
fn show(value: &Value) -> String {
    match value {
        Value::Null => "-".to_owned(),
        Value::String(text) => escape(text),
        other => escape(&other.to_string()),
    }
}

/// Milliseconds as seconds with one decimal (`-` for none).
fn seconds(value: &Value) -> String {
    value.as_u64().map_or_else(
        || "-".to_owned(),
        |ms| format!("{:.1} s", ms as f64 / 1000.0),
    )
}

pub(super) fn render(status: &Value) -> String {
    let mut html = String::from(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"2\">\
         <title>identify-queue</title>\
         <style>body{font-family:sans-serif;margin:2em}td,th{padding:0 1em;text-align:right}\
         th{text-align:left}</style></head><body>\n<h1>identify-queue</h1>\n",
    );
    let ready = status["ready"].as_bool().unwrap_or(false);
    let _ = writeln!(
        html,
        "<p>{} ({} mode)</p>",
        if ready {
            "Ready: grants flow.".to_owned()
        } else {
            format!("Not ready: {}.", show(&status["reason"]))
        },
        show(&status["mode"]),
    );
    let _ = writeln!(
        html,
        "<table>\n<tr><th>budget left</th><td>{} of {}</td></tr>\n\
         <tr><th>resets in</th><td>{}</td></tr>\n\
         <tr><th>max_concurrency</th><td>{}</td></tr>\n\
         <tr><th>granted</th><td>{}</td></tr>\n\
         <tr><th>cancelled</th><td>{}</td></tr>\n\
         <tr><th>waiting</th><td>{}</td></tr>\n</table>",
        show(&status["remaining"]),
        show(&status["total"]),
        seconds(&status["reset_after_ms"]),
        show(&status["max_concurrency"]),
        show(&status["granted"]),
        show(&status["cancelled"]),
        status["waiting_count"].as_u64().unwrap_or(0),
    );
    if let Some(buckets) = status["bucket_free_in_ms"].as_array() {
        if !buckets.is_empty() {
            html.push_str("<h2>Buckets</h2>\n<table><tr><th>bucket</th><th>free in</th></tr>\n");
            for (bucket, free) in buckets.iter().enumerate() {
                let free = match free.as_u64() {
                    Some(0) => "free".to_owned(),
                    Some(_) => seconds(free),
                    None => "at its release".to_owned(),
                };
                let _ = writeln!(html, "<tr><td>{bucket}</td><td>{free}</td></tr>");
            }
            html.push_str("</table>\n");
        }
    }
    html.push_str(
        "<h2>Waiting</h2>\n<table><tr><th>shard</th><th>bucket</th><th>waiting</th>\
         <th>estimated wait</th></tr>\n",
    );
    for waiting in status["waiting"].as_array().into_iter().flatten().take(500) {
        let _ = writeln!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            show(&waiting["shard"]),
            show(&waiting["bucket"]),
            seconds(&waiting["waiting_ms"]),
            seconds(&waiting["eta_ms"]),
        );
    }
    html.push_str("</table>\n</body></html>\n");
    html
}
