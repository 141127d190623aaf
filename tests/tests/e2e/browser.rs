//! The UI in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver against a stack filled by the
//! real demo flow: search for a request id, see both services' lines, open
//! the trace; every page (logs, traces, trace, request, services,
//! dashboards, alerts) loads with data; a log line carrying `<script>` and
//! `<img onerror>` stays inert. Screenshots go to `target/test-artifacts/`.
//!
//! `ui_performance_is_measured_in_the_browser` reports (does not assert)
//! the page's load and render times for BENCHMARKS.md.

use std::process::{Command, Stdio};
use std::time::Duration;

use fantoccini::{ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use sightline_tests::{DemoStack, Process, free_port, poll_until, unique_request_id};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// Where screenshots go: `target/test-artifacts/`, beside the binaries.
fn artifacts_dir() -> std::path::PathBuf {
    let dir = sightline_tests::binary("sightline-demo")
        .parent()
        .and_then(|profile| profile.parent())
        .map(|target| target.join("test-artifacts"))
        .expect("target dir");
    std::fs::create_dir_all(&dir).expect("create artifacts dir");
    dir
}

async fn start_browser() -> (Process, fantoccini::Client) {
    for path in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            std::path::Path::new(path).exists(),
            "{path} is missing: install Debian's chromium and chromium-driver (.ci/run does)"
        );
    }
    let port = free_port();
    let driver = Process::spawn(
        "chromedriver",
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null()),
    );
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,900",
            ],
        }),
    );
    let webdriver = format!("http://127.0.0.1:{port}");
    let client = poll_until(
        "chromedriver to open a session",
        Duration::from_secs(30),
        || {
            let capabilities = capabilities.clone();
            let webdriver = webdriver.clone();
            async move {
                ClientBuilder::new(HttpConnector::new())
                    .capabilities(capabilities)
                    .connect(&webdriver)
                    .await
                    .map(Some)
                    .map_err(|error| error.to_string())
            }
        },
    )
    .await;
    (driver, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_by_request_id_shows_both_services_and_opens_the_trace() {
    let stack = DemoStack::start().await;
    let request_id = unique_request_id("browser");
    stack.place_order(&request_id).await;
    let records = stack
        .logs_from_services(&format!("request_id:{request_id}"), &["gateway", "order"])
        .await;
    // The trace link opens a trace view once: wait until both services' spans are stored.
    let trace_id = records
        .iter()
        .find_map(|r| r["trace_id"].as_str())
        .expect("a trace id");
    stack
        .trace_with_services(trace_id, &["gateway", "order"])
        .await;

    let (_driver, browser) = start_browser().await;
    browser.goto(&stack.ui_url("/")).await.expect("open the UI");
    let query = browser
        .wait()
        .for_element(Locator::Id("query"))
        .await
        .expect("query box");
    query
        .send_keys(&format!("request_id:{request_id}"))
        .await
        .expect("type the query");
    browser
        .find(Locator::Id("search-button"))
        .await
        .expect("search button")
        .click()
        .await
        .expect("click search");

    let rows = poll_until(
        "result rows of both services",
        Duration::from_secs(30),
        || async {
            let rows = browser
                .find_all(Locator::Css("#results tbody tr.log-row"))
                .await
                .map_err(|e| e.to_string())?;
            let mut texts = Vec::new();
            for row in &rows {
                texts.push(row.text().await.map_err(|e| e.to_string())?);
            }
            let has = |service: &str| {
                texts
                    .iter()
                    .any(|t| t.contains(service) && t.contains(&request_id))
            };
            if has("gateway") && has("order") {
                Ok(Some(texts))
            } else {
                Err(format!("rows: {texts:?}"))
            }
        },
    )
    .await;
    assert!(
        rows.iter().all(|row| row.contains(&request_id)),
        "only the request's lines: {rows:?}"
    );
    let url = browser.current_url().await.expect("url");
    assert!(
        url.fragment().unwrap_or_default().contains("request_id"),
        "the search is in the URL: {url}"
    );
    let screenshot = browser.screenshot().await.expect("screenshot");
    std::fs::write(artifacts_dir().join("logs-search.png"), screenshot).expect("write screenshot");

    browser
        .find(Locator::Css("a.trace-link"))
        .await
        .expect("a trace link in a row")
        .click()
        .await
        .expect("open the trace");
    let spans = poll_until(
        "waterfall rows of both services",
        Duration::from_secs(30),
        || async {
            let rows = browser
                .find_all(Locator::Css("#waterfall .span-row"))
                .await
                .map_err(|e| e.to_string())?;
            let mut texts = Vec::new();
            for row in &rows {
                texts.push(row.text().await.map_err(|e| e.to_string())?);
            }
            let has = |service: &str| texts.iter().any(|t| t.contains(service));
            if has("gateway") && has("order") {
                Ok(Some(texts))
            } else {
                Err(format!("spans: {texts:?}"))
            }
        },
    )
    .await;
    assert!(spans.len() >= 2, "{spans:?}");
    let bars = browser
        .find_all(Locator::Css("#waterfall .span-bar"))
        .await
        .expect("bars");
    assert_eq!(bars.len(), spans.len(), "one bar per span");
    self::screenshot(&browser, "trace-waterfall.png").await;

    // Trace comparison: the same order again with payment 800 ms slower;
    // comparing the two names payment's span as the difference.
    stack
        .set_faults("payment", serde_json::json!({"latency_ms": 800}))
        .await;
    let slow_request = unique_request_id("browser-slow");
    stack.place_order(&slow_request).await;
    stack.set_faults("payment", serde_json::json!({})).await;
    let slow_records = stack
        .logs_from_services(&format!("request_id:{slow_request}"), &["payment"])
        .await;
    let slow_trace = slow_records
        .iter()
        .find_map(|r| r["trace_id"].as_str())
        .expect("the slow order's trace id")
        .to_string();
    stack
        .trace_with_services(&slow_trace, &["gateway", "order", "payment"])
        .await;
    let base = stack.ui_url("/");
    let attempt = std::sync::atomic::AtomicUsize::new(0);
    let difference = poll_until(
        "the comparison naming payment",
        Duration::from_secs(60),
        || async {
            // A new hash each try, so the view is drawn again.
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let hash = format!("compare?a={trace_id}&b={slow_trace}&try={n}");
            let state = open_view_state(&browser, &base, &hash, "compare").await;
            let found = js(
                &browser,
                "const d = document.querySelector('#compare-difference'); \
                 const row = document.querySelector('#compare-operations tr.operation-row.difference'); \
                 return d ? [d.textContent, row ? row.dataset.service : null] : null;",
            )
            .await;
            if state[0] == "1" && found[1] == "payment" {
                Ok(Some(found[0].as_str().unwrap_or_default().to_string()))
            } else {
                Err(format!("compare view: {state} {found}"))
            }
        },
    )
    .await;
    assert!(
        difference.contains("more self time in B than in A"),
        "{difference}"
    );
    self::screenshot(&browser, "trace-compare.png").await;

    // From the slow trace's view, "Compare with typical" sets it against
    // its operations' usual durations.
    open_view(&browser, &base, &format!("trace/{slow_trace}"), "trace").await;
    let _ = js(
        &browser,
        "document.querySelector('#view').dataset.stale = '1'; \
         document.querySelector('#compare-typical-link').click(); return true;",
    )
    .await;
    let typical = wait_js(
        &browser,
        "the comparison with typical",
        Duration::from_secs(30),
        "const v = document.querySelector('#view[data-view=\"compare\"]:not([data-stale])'); \
         return v && v.dataset.loaded ? [v.dataset.loaded, \
           document.querySelector('.comparison')?.dataset.mode, \
           [...document.querySelectorAll('#compare-operations tr.operation-row')].map(r => r.dataset.service)] : null;",
    )
    .await;
    assert_eq!(typical[0], "1", "{typical}");
    assert_eq!(typical[1], "typical", "{typical}");
    let services = typical[2].as_array().expect("operation rows");
    for service in ["gateway", "order", "payment"] {
        assert!(services.iter().any(|s| s == service), "{typical}");
    }
    browser.close().await.expect("close the browser");
}

/// Runs `script` (a function body returning a value) until it returns
/// something other than null/false, for up to `timeout`.
async fn wait_js(
    browser: &fantoccini::Client,
    what: &str,
    timeout: Duration,
    script: &str,
) -> serde_json::Value {
    poll_until(what, timeout, || async {
        let value = browser
            .execute(script, vec![])
            .await
            .map_err(|e| e.to_string())?;
        match value {
            serde_json::Value::Null | serde_json::Value::Bool(false) => {
                Err(format!("{script} returned {value}"))
            }
            other => Ok(Some(other)),
        }
    })
    .await
}

/// Opens `#/<hash>` and waits until the view says it has loaded (its
/// `data-loaded` is `1`; `error` fails the test with the page's message).
async fn open_view(browser: &fantoccini::Client, stack_url: &str, hash: &str, view: &str) {
    let state = open_view_state(browser, stack_url, hash, view).await;
    assert_eq!(state[0], "1", "{view} view failed: {}", state[1]);
}

/// Opens `#/<hash>`; `[data-loaded, the view's text]` once it has loaded or failed.
async fn open_view_state(
    browser: &fantoccini::Client,
    stack_url: &str,
    hash: &str,
    view: &str,
) -> serde_json::Value {
    // The view on screen is marked stale: the one to wait for is the new one.
    let _ = browser
        .execute(
            "const v = document.querySelector('#view'); if (v) v.dataset.stale = '1';",
            vec![],
        )
        .await;
    browser
        .goto(&format!("{stack_url}#/{hash}"))
        .await
        .expect("navigate");
    wait_js(
        browser,
        &format!("the {view} view to load"),
        Duration::from_secs(30),
        &format!(
            "const v = document.querySelector('#view[data-view=\"{view}\"]:not([data-stale])'); \
             return v && v.dataset.loaded ? [v.dataset.loaded, v.textContent.slice(0, 500)] : null;"
        ),
    )
    .await
}

async fn screenshot(browser: &fantoccini::Client, name: &str) {
    let png = browser.screenshot().await.expect("screenshot");
    std::fs::write(artifacts_dir().join(name), png).expect("write screenshot");
}

async fn js(browser: &fantoccini::Client, script: &str) -> serde_json::Value {
    browser.execute(script, vec![]).await.expect(script)
}

/// A log record sent over OTLP/HTTP JSON, as any OpenTelemetry SDK would.
async fn send_log(collector_http_port: u16, service: &str, body: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos()
        .to_string();
    let payload = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": service}}]},
        "scopeLogs": [{"scope": {}, "logRecords": [{
            "timeUnixNano": now, "severityText": "WARN", "severityNumber": 13,
            "body": {"stringValue": body},
        }]}],
    }]});
    let response = reqwest::Client::new()
        .post(format!("http://127.0.0.1:{collector_http_port}/v1/logs"))
        .json(&payload)
        .send()
        .await
        .expect("OTLP/HTTP answers");
    assert!(
        response.status().is_success(),
        "log export: {}",
        response.status()
    );
}

/// Polls the request story until its logs come from at least three services
/// and it has spans: the request view is then checked against it.
async fn request_story(stack: &DemoStack, id: &str) -> serde_json::Value {
    let http = reqwest::Client::new();
    let url = stack.ui_url(&format!("/api/requests/{id}"));
    poll_until(
        "a request story with logs of three services and spans",
        Duration::from_secs(60),
        || async {
            let body = sightline_tests::get_json(&http, &url).await?;
            let timeline = body["timeline"].as_array().cloned().unwrap_or_default();
            let log_services: std::collections::BTreeSet<String> = timeline
                .iter()
                .filter(|e| e["type"] == "log")
                .filter_map(|e| e["service"].as_str().map(str::to_string))
                .collect();
            let spans = timeline.iter().filter(|e| e["type"] == "span").count();
            if log_services.len() >= 3 && spans >= 2 {
                Ok(Some(body))
            } else {
                Err(format!("log services {log_services:?}, {spans} spans"))
            }
        },
    )
    .await
}

/// The dashboards the demo serves: the JSON files of `dashboards/`, which the
/// launcher passes as `--dashboards-dir`.
fn dashboard_files() -> Vec<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../dashboards");
    let mut files: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".json"))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_page_loads_with_data_and_log_content_stays_inert() {
    let stack = DemoStack::start().await;
    let request_id = unique_request_id("pages");
    stack.place_order(&request_id).await;
    let other_request = unique_request_id("pages-other");
    stack.place_order(&other_request).await;
    let marker = unique_request_id("xss");
    let xss = format!(
        "{marker} <script>window.__xss = 'script'</script> <img src=x onerror=\"window.__xss = 'img'\">"
    );
    send_log(stack.ports.collector_http, "attacker", &xss).await;
    stack
        .logs_from_services(&format!("\"{marker}\""), &["attacker"])
        .await;
    let story = request_story(&stack, &request_id).await;
    let trace_id = story["trace_ids"][0]
        .as_str()
        .expect("the request's trace")
        .to_string();
    let trace = stack
        .trace_with_services(&trace_id, &["gateway", "order"])
        .await;
    let base = stack.ui_url("/");
    let (_driver, browser) = start_browser().await;

    // Logs: rows, the histogram (a uPlot canvas), the field sidebar.
    open_view(&browser, &base, "logs?from=now-1h", "logs").await;
    let all_rows = wait_js(
        &browser,
        "log rows, histogram and field values",
        Duration::from_secs(30),
        "const rows = document.querySelectorAll('#results tr.log-row').length; \
         const canvas = document.querySelector('#histogram canvas'); \
         const values = document.querySelectorAll('#fields .top-values li').length; \
         return rows > 0 && canvas && values > 0 ? rows : null;",
    )
    .await;
    screenshot(&browser, "logs.png").await;
    // A search narrows the results to the request's lines.
    open_view(
        &browser,
        &base,
        &format!("logs?q=request_id:{request_id}&from=now-1h"),
        "logs",
    )
    .await;
    let narrowed = js(
        &browser,
        "return [...document.querySelectorAll('#results tr.log-row')].map(r => r.textContent);",
    )
    .await;
    let narrowed = narrowed.as_array().expect("rows").clone();
    assert!(!narrowed.is_empty(), "the request's lines are found");
    assert!(
        (narrowed.len() as u64) < all_rows.as_u64().expect("count"),
        "{} of {all_rows} rows",
        narrowed.len()
    );
    assert!(
        narrowed
            .iter()
            .all(|row| row.as_str().unwrap_or_default().contains(&request_id)),
        "only the request's lines: {narrowed:?}"
    );
    // Expanding a record shows its fields and raw JSON.
    browser
        .find(Locator::Css("#results tr.log-row td.body"))
        .await
        .expect("a row")
        .click()
        .await
        .expect("expand");
    let raw = wait_js(
        &browser,
        "the expanded record",
        Duration::from_secs(10),
        "const pre = document.querySelector('tr.log-detail pre.raw-json'); return pre && pre.textContent;",
    )
    .await;
    assert!(
        raw.as_str().unwrap_or_default().contains(&request_id),
        "{raw}"
    );
    assert!(
        browser
            .current_url()
            .await
            .expect("url")
            .fragment()
            .unwrap_or_default()
            .contains("open="),
        "the open record is in the URL"
    );
    // "Show context": the record's neighbours in its stream, the record marked.
    browser
        .find(Locator::Css("tr.log-detail button.show-context"))
        .await
        .expect("the context button")
        .click()
        .await
        .expect("show context");
    let context = wait_js(
        &browser,
        "the record's context",
        Duration::from_secs(10),
        "const rows = document.querySelectorAll('tr.log-detail .context-row').length; \
         const anchor = document.querySelector('tr.log-detail .context-row.anchor'); \
         return anchor ? rows : null;",
    )
    .await;
    assert!(
        context.as_u64().unwrap_or_default() >= 2,
        "neighbours: {context}"
    );
    // A bad query answers 400: the error is shown under the query bar with its position.
    let state = open_view_state(&browser, &base, "logs?q=body:(oops", "logs").await;
    assert_eq!(state[0], "error", "a bad query fails the search: {state}");
    let error = wait_js(
        &browser,
        "the query error",
        Duration::from_secs(10),
        "const e = document.querySelector('.query-error'); return e && e.textContent;",
    )
    .await;
    assert!(
        error.as_str().unwrap_or_default().contains("position"),
        "{error}"
    );

    // Pipes: a table over every record, with a bar per row; a timechart
    // draws its series; a bad pipe shows where it is wrong.
    open_view(
        &browser,
        &base,
        "logs?q=*%20%7C%20stats%20count()%20by%20service%20%7C%20sort%20-count&from=now-1h",
        "logs",
    )
    .await;
    let table = js(
        &browser,
        "return [...document.querySelectorAll('#stats-table tbody tr')].map(r => \
           [r.cells[0].textContent, Number(r.cells[1].textContent), r.querySelector('.stats-bar')?.style.width]);",
    )
    .await;
    let rows = table.as_array().cloned().unwrap_or_default();
    let services: Vec<&str> = rows.iter().filter_map(|row| row[0].as_str()).collect();
    assert!(
        services.contains(&"gateway") && services.contains(&"order"),
        "{table}"
    );
    let counts: Vec<u64> = rows.iter().filter_map(|row| row[1].as_u64()).collect();
    assert!(counts.windows(2).all(|pair| pair[0] >= pair[1]), "{table}");
    // Bars as long as each count against the largest.
    for row in &rows {
        let expected = format!(
            "{}%",
            (row[1].as_f64().unwrap_or_default() * 100.0 / counts[0] as f64).round()
        );
        assert_eq!(row[2], serde_json::json!(expected), "{table}");
    }
    screenshot(&browser, "logs-stats.png").await;
    open_view(
        &browser,
        &base,
        "logs?q=*%20%7C%20timechart%20span%3D1m%20count()%20by%20service&from=now-1h",
        "logs",
    )
    .await;
    let chart = js(
        &browser,
        "return [!!document.querySelector('#histogram canvas'), \
                 document.querySelectorAll('#stats-table tbody tr').length, \
                 [...document.querySelectorAll('#histogram .u-legend .u-label')].map(l => l.textContent)];",
    )
    .await;
    assert_eq!(chart[0], true, "{chart}");
    screenshot(&browser, "logs-timechart.png").await;
    assert!(chart[1].as_u64().unwrap_or_default() > 0, "{chart}");
    assert!(
        chart[2]
            .as_array()
            .is_some_and(|labels| labels.iter().any(|l| l == "gateway")),
        "{chart}"
    );
    let state = open_view_state(
        &browser,
        &base,
        "logs?q=*%20%7C%20stats%20avgg(duration_ms)",
        "logs",
    )
    .await;
    assert_eq!(state[0], "error", "{state}");
    let caret = js(
        &browser,
        "const e = document.querySelector('.query-error'); return e && [e.textContent, e.querySelector('pre.caret')?.textContent];",
    )
    .await;
    assert!(
        caret[0]
            .as_str()
            .unwrap_or_default()
            .contains("unknown function `avgg`"),
        "{caret}"
    );
    assert_eq!(
        caret[1].as_str().unwrap_or_default(),
        "* | stats avgg(duration_ms)\n          ^",
        "{caret}"
    );

    // The XSS line: shown as text, no element created, nothing ran.
    open_view(&browser, &base, &format!("logs?q=%22{marker}%22"), "logs").await;
    let inert = js(
        &browser,
        "const row = document.querySelector('#results tr.log-row td.body'); \
         return { text: row && row.textContent, \
                  imgs: document.querySelectorAll('#view img').length, \
                  scripts: document.querySelectorAll('#view script').length, \
                  ran: window.__xss === undefined ? null : window.__xss };",
    )
    .await;
    assert!(
        inert["text"]
            .as_str()
            .unwrap_or_default()
            .contains("<script>")
            && inert["text"]
                .as_str()
                .unwrap_or_default()
                .contains("<img src=x onerror="),
        "the line is shown as text: {inert}"
    );
    assert_eq!(inert["imgs"], 0, "no element from the line: {inert}");
    assert_eq!(inert["scripts"], 0, "no script element: {inert}");
    assert_eq!(
        inert["ran"],
        serde_json::Value::Null,
        "nothing ran: {inert}"
    );
    assert!(
        browser.get_alert_text().await.is_err(),
        "no alert dialog is open"
    );
    screenshot(&browser, "logs-xss-inert.png").await;

    // Live tail: a line sent after the tail started appears at the top.
    open_view(&browser, &base, "logs?q=service:tailed&tail=1", "logs").await;
    let tailed = unique_request_id("tailed");
    poll_until("the tailed line in the page", Duration::from_secs(30), || async {
        send_log(stack.ports.collector_http, "tailed", &tailed).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rows = js(
            &browser,
            "return [...document.querySelectorAll('#results tr.log-row.tailed td.body')].map(td => td.textContent);",
        )
        .await;
        if rows.as_array().is_some_and(|r| r.iter().any(|t| t == tailed.as_str())) {
            Ok(Some(()))
        } else {
            Err(format!("tailed rows: {rows}"))
        }
    })
    .await;

    // Traces: results as duration bars; a service filter narrows them.
    open_view(&browser, &base, "traces?from=now-1h", "traces").await;
    let all_traces = js(
        &browser,
        "return document.querySelectorAll('.trace-result .duration-bar').length;",
    )
    .await;
    assert!(all_traces.as_u64().unwrap_or_default() >= 2, "{all_traces}");
    screenshot(&browser, "traces.png").await;
    open_view(
        &browser,
        &base,
        "traces?service=gateway&operation=POST%20%2Fapi%2Flogin&from=now-1h",
        "traces",
    )
    .await;
    let logins = js(
        &browser,
        "return [...document.querySelectorAll('.trace-result')].map(r => r.querySelector('strong').textContent);",
    )
    .await;
    let logins = logins.as_array().expect("results").clone();
    assert!(!logins.is_empty(), "the logins' traces");
    assert!(
        logins
            .iter()
            .all(|t| t.as_str().unwrap_or_default() == "gateway: POST /api/login"),
        "only logins: {logins:?}"
    );
    assert!(
        (logins.len() as u64) < all_traces.as_u64().unwrap_or_default(),
        "the filter narrows: {logins:?} of {all_traces}"
    );

    // The waterfall: one bar per span, coloured by the span's latency.
    open_view(&browser, &base, &format!("trace/{trace_id}"), "trace").await;
    let bars = js(
        &browser,
        "return [...document.querySelectorAll('#waterfall .span-row[data-span-id]')].map(r => \
           [r.dataset.spanId, r.querySelector('.span-bar').className]);",
    )
    .await;
    let bars = bars.as_array().expect("bars").clone();
    let spans = trace["spans"].as_array().expect("spans");
    assert!(
        bars.len() >= spans.len(),
        "{} bars, {} spans",
        bars.len(),
        spans.len()
    );
    for span in spans {
        let id = span["spanID"].as_str().expect("span id");
        let micros = span["duration"].as_i64().expect("duration");
        let expected = if micros < 100_000 {
            "fast"
        } else if micros <= 500_000 {
            "medium"
        } else {
            "slow"
        };
        let class = bars
            .iter()
            .find(|bar| bar[0] == id)
            .and_then(|bar| bar[1].as_str())
            .unwrap_or_else(|| panic!("no bar for span {id}"));
        assert!(
            class.split(' ').any(|c| c == expected),
            "span {id} of {micros} µs has bar classes {class:?}, expected {expected}"
        );
    }
    let critical = js(
        &browser,
        "return document.querySelectorAll('#waterfall .span-bar.critical').length;",
    )
    .await;
    assert!(
        critical.as_u64().unwrap_or_default() >= 1,
        "the critical path is marked"
    );
    browser
        .find(Locator::Css("#waterfall .span-row[data-span-id]"))
        .await
        .expect("a span row")
        .click()
        .await
        .expect("select a span");
    let logs_link = wait_js(
        &browser,
        "span details with a link to the span's logs",
        Duration::from_secs(10),
        "const a = document.querySelector('#span-details a.span-logs-link'); return a && a.getAttribute('href');",
    )
    .await;
    assert!(
        logs_link.as_str().unwrap_or_default().contains("span_id"),
        "{logs_link}"
    );
    screenshot(&browser, "trace-waterfall-full.png").await;

    // The request view: logs of at least three services and the trace.
    open_view(&browser, &base, &format!("request/{request_id}"), "request").await;
    let view = js(
        &browser,
        "return { logServices: [...new Set([...document.querySelectorAll('#request-timeline .story-log')].map(r => r.dataset.service))], \
                  spans: document.querySelectorAll('#request-timeline .story-span').length, \
                  traces: [...document.querySelectorAll('.story-traces a.trace-link')].map(a => a.textContent) };",
    )
    .await;
    assert!(
        view["logServices"].as_array().map_or(0, Vec::len) >= 3,
        "logs of three services: {view}"
    );
    // Spans may still arrive (the async notification): at least what the API had.
    let story_spans = story["timeline"].as_array().map_or(0, |t| {
        t.iter().filter(|e| e["type"] == "span").count() as u64
    });
    assert!(
        view["spans"].as_u64().unwrap_or_default() >= story_spans,
        "every span of the story ({story_spans}): {view}"
    );
    assert!(
        view["traces"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == trace_id.as_str())),
        "{view}"
    );
    screenshot(&browser, "request.png").await;

    // Services: the map and the table with the shop's services.
    open_view(&browser, &base, "services?from=now-1h", "services").await;
    let services = js(
        &browser,
        "return { rows: [...document.querySelectorAll('.service-row')].map(r => r.dataset.service), \
                  nodes: document.querySelectorAll('#service-map .node').length, \
                  edges: document.querySelectorAll('#service-map .edge-group').length, \
                  source: document.querySelector('#services-status').dataset.source };",
    )
    .await;
    for service in ["gateway", "order"] {
        assert!(
            services["rows"]
                .as_array()
                .is_some_and(|rows| rows.iter().any(|r| r == service)),
            "{service} in {services}"
        );
    }
    assert!(
        services["nodes"].as_u64().unwrap_or_default() >= 3,
        "{services}"
    );
    assert!(
        services["edges"].as_u64().unwrap_or_default() >= 1,
        "{services}"
    );
    screenshot(&browser, "services.png").await;

    // Dashboards: the list is the files of dashboards/; a panel draws a chart.
    open_view(&browser, &base, "dashboards", "dashboards").await;
    let listed = js(
        &browser,
        "return [...document.querySelectorAll('.dashboard-item')].map(i => i.dataset.uid);",
    )
    .await;
    let files = dashboard_files();
    assert_eq!(
        listed.as_array().map_or(0, Vec::len),
        files.len(),
        "{listed} vs {files:?}"
    );
    screenshot(&browser, "dashboards.png").await;
    let uids: Vec<String> = listed
        .as_array()
        .map(|l| {
            l.iter()
                .filter_map(|u| u.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if !uids.is_empty() {
        // The demo's scrapes fill the series the panels query; a timeseries
        // panel draws a uPlot canvas once they do.
        let drawn = poll_until(
            "a dashboard panel drawn with uPlot",
            Duration::from_secs(120),
            || async {
                let mut seen = Vec::new();
                for uid in &uids {
                    open_view(
                        &browser,
                        &base,
                        &format!("dashboard/{uid}?from=now-15m"),
                        "dashboard",
                    )
                    .await;
                    let canvases = js(
                        &browser,
                        "return document.querySelectorAll('#dashboard-grid .panel canvas').length;",
                    )
                    .await;
                    if canvases.as_u64().unwrap_or_default() >= 1 {
                        return Ok(Some(uid.clone()));
                    }
                    seen.push(format!("{uid}: {canvases}"));
                }
                Err(format!("canvases: {seen:?}"))
            },
        )
        .await;
        screenshot(&browser, &format!("dashboard-{drawn}.png")).await;
        // Template variables: `label_values(http_requests_total, service)` lists the shop's services.
        if uids.iter().any(|u| u == "sightline-service") {
            poll_until(
                "the service variable's values",
                Duration::from_secs(60),
                || async {
                    open_view(
                        &browser,
                        &base,
                        "dashboard/sightline-service?from=now-15m",
                        "dashboard",
                    )
                    .await;
                    let options = js(
                        &browser,
                        "const s = document.querySelector('select[data-variable=\"service\"]'); \
                     return s ? [...s.options].map(o => o.value) : [];",
                    )
                    .await;
                    if options
                        .as_array()
                        .is_some_and(|o| o.iter().any(|v| v == "gateway"))
                    {
                        Ok(Some(()))
                    } else {
                        Err(format!("options: {options}"))
                    }
                },
            )
            .await;
            screenshot(&browser, "dashboard-service.png").await;

            // Exemplars: the latency panels draw the requests behind the
            // buckets (the services' OpenMetrics exemplars, scraped) as
            // points linking to each request's story. Each try is a new
            // hash, so the view is drawn again.
            let attempt = std::sync::atomic::AtomicUsize::new(0);
            let href = poll_until(
                "exemplar points on the service dashboard's latency panels",
                Duration::from_secs(90),
                || async {
                    let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    open_view(
                        &browser,
                        &base,
                        &format!(
                            "dashboard/sightline-service?from=now-15m&var-service=gateway&try={n}"
                        ),
                        "dashboard",
                    )
                    .await;
                    let hrefs = wait_js(
                        &browser,
                        "the panels drawn",
                        Duration::from_secs(30),
                        "const canvases = document.querySelectorAll('#dashboard-grid .panel canvas').length; \
                         return canvases ? [...document.querySelectorAll('#dashboard-grid a.exemplar')] \
                           .filter(a => !a.hidden).map(a => a.getAttribute('href')) : null;",
                    )
                    .await;
                    match hrefs.as_array().and_then(|all| all.first()) {
                        Some(href) => Ok(Some(href.as_str().unwrap_or_default().to_string())),
                        None => Err(format!("exemplar links: {hrefs}")),
                    }
                },
            )
            .await;
            let trace_id = href
                .strip_prefix("#/request/")
                .unwrap_or_else(|| panic!("an exemplar links to a request: {href}"));
            assert_eq!(trace_id.len(), 32, "{href}");
            assert!(trace_id.bytes().all(|b| b.is_ascii_hexdigit()), "{href}");
            screenshot(&browser, "dashboard-exemplars.png").await;
            let _ = browser
                .execute(
                    "const v = document.querySelector('#view'); if (v) v.dataset.stale = '1'; \
                     document.querySelector(`a.exemplar[href=\"${arguments[0]}\"]`).click();",
                    vec![serde_json::json!(href)],
                )
                .await
                .expect("click an exemplar");
            wait_js(
                &browser,
                "the exemplar's link followed",
                Duration::from_secs(30),
                &format!("return location.hash === {:?};", href),
            )
            .await;
            // The story: its spans may still be on their way from the
            // service's batch exporter (each try is a new hash, so the view
            // is drawn again).
            let attempt = std::sync::atomic::AtomicUsize::new(0);
            poll_until(
                "the exemplar's request story",
                Duration::from_secs(60),
                || async {
                    let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let hash = format!("{}?try={n}", &href[2..]);
                    let state = open_view_state(&browser, &base, &hash, "request").await;
                    let text = state[1].as_str().unwrap_or_default();
                    if state[0] == "1" && text.contains(&format!("Trace {trace_id}")) {
                        Ok(Some(()))
                    } else {
                        Err(format!("request view: {state}"))
                    }
                },
            )
            .await;
        }
    }

    // Alerts: the demo's rule files are loaded; each rule shows its state.
    open_view(&browser, &base, "alerts", "alerts").await;
    let rules = js(
        &browser,
        "return [...document.querySelectorAll('.rule-row')].map(r => r.dataset.rule);",
    )
    .await;
    assert!(
        rules.as_array().map_or(0, Vec::len) >= 1,
        "rules shown: {rules}"
    );
    screenshot(&browser, "alerts.png").await;
    browser.close().await.expect("close the browser");
}

/// Median of a few runs.
fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// Reports (prints and writes `target/test-artifacts/ui-perf.json`) the
/// logs page's first load on loopback, rendering 1,000 log rows and a
/// 1,000-span waterfall, measured in the browser with Navigation Timing and
/// `performance.now()` through `window.__sightlinePerf`. Run with
/// `--nocapture` to see the numbers; they go in BENCHMARKS.md "UI".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ui_performance_is_measured_in_the_browser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let collector = sightline_tests::CollectorProcess::start(dir.path(), &[]).await;
    for i in 0..200 {
        send_log(
            collector.otlp_http_port,
            "perf",
            &format!("perf line {i} user u-{}", i % 7),
        )
        .await;
    }
    let http = reqwest::Client::new();
    poll_until(
        "the perf lines to be searchable",
        Duration::from_secs(30),
        || async {
            let body = sightline_tests::get_json(
                &http,
                &collector.url("/api/logs?q=service:perf&limit=1"),
            )
            .await?;
            if body["total_hits"].as_u64().unwrap_or_default() >= 200 {
                Ok(Some(()))
            } else {
                Err(format!("{body}"))
            }
        },
    )
    .await;
    let (_driver, browser) = start_browser().await;
    let base = collector.url("/");
    let (mut dcl, mut load, mut data) = (Vec::new(), Vec::new(), Vec::new());
    for run in 0..5 {
        // A fresh document each time: a different query string defeats any reuse.
        browser
            .goto(&format!("{base}?run={run}#/logs?q=service:perf"))
            .await
            .expect("open the logs page");
        wait_js(
            &browser,
            "the logs page with rows",
            Duration::from_secs(30),
            "const v = document.querySelector('#view[data-view=\"logs\"]'); \
             return v && v.dataset.loaded === '1' && document.querySelector('#histogram canvas') ? true : null;",
        )
        .await;
        let nav = js(&browser, "return window.__sightlinePerf.navigation();").await;
        dcl.push(nav["domContentLoaded"].as_f64().expect("domContentLoaded"));
        load.push(nav["load"].as_f64().expect("load"));
        data.push(nav["firstDataRender"].as_f64().expect("firstDataRender"));
    }
    let mut rows = Vec::new();
    let mut waterfall = Vec::new();
    for _ in 0..5 {
        rows.push(
            js(
                &browser,
                "return window.__sightlinePerf.renderLogRows(1000);",
            )
            .await
            .as_f64()
            .expect("rows ms"),
        );
        waterfall.push(
            js(
                &browser,
                "return window.__sightlinePerf.renderWaterfall(1000);",
            )
            .await
            .as_f64()
            .expect("waterfall ms"),
        );
    }
    let report = serde_json::json!({
        "logs_page_dom_content_loaded_ms": median(dcl),
        "logs_page_load_event_ms": median(load),
        "logs_page_first_results_rendered_ms": median(data),
        "render_1000_log_rows_ms": median(rows),
        "render_1000_span_waterfall_ms": median(waterfall),
        "runs": 5,
    });
    println!("UI performance (median of 5): {report:#}");
    std::fs::write(
        artifacts_dir().join("ui-perf.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    )
    .expect("write the report");
    for (name, value) in report.as_object().expect("object") {
        assert!(
            value.as_f64().is_some_and(|v| v.is_finite() && v >= 0.0),
            "{name}: {value}"
        );
    }
    browser.close().await.expect("close the browser");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_with_a_query_token_gets_it_asked_once_and_sent_as_a_header() {
    const TOKEN: &str = "ui-test-query-token-7f3a";
    let data_dir = tempfile::tempdir().unwrap();
    let token_file = data_dir.path().join("query.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let collector = sightline_tests::CollectorProcess::start(
        &data_dir.path().join("collector"),
        &["--query-token-file", token_file.to_str().unwrap()],
    )
    .await;
    let ui = collector.url("/");
    let (_driver, browser) = start_browser().await;
    browser.goto(&ui).await.expect("navigate");

    // The page loads without a token, its first data call is refused, and
    // it asks for the token.
    wait_js(
        &browser,
        "the token prompt",
        Duration::from_secs(30),
        "return document.querySelector('#token-dialog #token-input') !== null;",
    )
    .await;
    screenshot(&browser, "token-prompt.png").await;
    let input = browser
        .find(Locator::Css("#token-input"))
        .await
        .expect("token input");
    input.send_keys("wrong-token").await.expect("type");
    browser
        .find(Locator::Css("#token-form button"))
        .await
        .expect("submit")
        .click()
        .await
        .expect("click");
    let refused = wait_js(
        &browser,
        "the prompt again after a wrong token",
        Duration::from_secs(30),
        "const d = document.querySelector('#token-dialog'); return d && d.textContent.includes('refused') ? d.textContent : null;",
    )
    .await;
    assert!(refused.as_str().unwrap().contains("refused"), "{refused}");

    let input = browser.find(Locator::Css("#token-input")).await.unwrap();
    input.send_keys(TOKEN).await.expect("type");
    browser
        .find(Locator::Css("#token-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let loaded = wait_js(
        &browser,
        "the logs view with the token",
        Duration::from_secs(30),
        "const v = document.querySelector('#view[data-view=\"logs\"]'); \
         return v && v.dataset.loaded === '1' && !document.querySelector('#token-dialog') ? location.href : null;",
    )
    .await;
    assert!(
        !loaded.as_str().unwrap().contains(TOKEN),
        "the token is never in the URL: {loaded}"
    );
    // Kept for the tab: another view loads without asking again.
    open_view(&browser, &ui, "dashboards", "dashboards").await;
    assert_eq!(
        js(
            &browser,
            "return document.querySelector('#token-dialog') === null;"
        )
        .await,
        true
    );
    screenshot(&browser, "token-accepted.png").await;
    let _ = browser.close().await;
}

/// Rules for the alert cards: one fires at once, one waits an hour in
/// pending, one never fires, and a recording rule. The firing one's summary
/// carries markup that must stay text.
const UI_RULES: &str = r#"groups:
  - name: ui-alerts
    interval: 1s
    rules:
      - alert: CheckoutBroken
        expr: vector(3) > 0
        labels:
          severity: page
          service: checkout
        annotations:
          summary: 'checkout has {{ $value }} problems <img src=x onerror="window.__alertXss=1">'
          runbook: docs/runbooks.md#checkout
      - alert: SlowToFire
        expr: vector(1)
        for: 1h
      - alert: NeverFires
        expr: vector(0) > 1
      - record: ui:constant:sum
        expr: vector(2)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alert_cards_show_firing_and_pending_alerts_with_links_and_inert_annotations() {
    let data_dir = tempfile::tempdir().unwrap();
    std::fs::write(data_dir.path().join("ui.rules.yml"), UI_RULES).unwrap();
    let config = data_dir.path().join("sightline.yml");
    std::fs::write(
        &config,
        "global:\n  evaluation_interval: 1s\nrule_files:\n  - ui.rules.yml\n",
    )
    .unwrap();
    let collector = sightline_tests::CollectorProcess::start(
        &data_dir.path().join("collector"),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    let ui = collector.url("/");
    let (_driver, browser) = start_browser().await;

    // The rules are evaluated every second: reload the view until the
    // firing card is there.
    let firing = poll_until(
        "the firing alert's card",
        Duration::from_secs(60),
        || async {
            let state = open_view_state(&browser, &ui, "alerts", "alerts").await;
            if state[0] != "1" {
                return Err(format!("alerts view failed: {}", state[1]));
            }
            let card = js(
                &browser,
                "const c = document.querySelector('.alert-card.state-firing[data-alertname=\"CheckoutBroken\"]'); \
                 return c ? { text: c.textContent, \
                   links: [...c.querySelectorAll('a.alert-link')].map(a => [a.textContent, a.getAttribute('href')]), \
                   chips: [...c.querySelectorAll('.label-chip')].map(s => s.textContent), \
                   images: c.querySelectorAll('img').length } : null;",
            )
            .await;
            Ok((!card.is_null()).then_some(card))
        },
    )
    .await;
    let text = firing["text"].as_str().unwrap();
    assert!(
        text.contains("checkout has 3 problems <img src=x onerror=\"window.__alertXss=1\">"),
        "the templated summary, markup shown as text: {text}"
    );
    assert!(text.contains("docs/runbooks.md#checkout"), "{text}");
    assert!(
        text.contains("value 3") && !text.contains("3e+00"),
        "{text}"
    );
    assert_eq!(firing["images"], 0, "annotation markup became elements");
    let chips: Vec<&str> = firing["chips"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|chip| chip.as_str())
        .collect();
    for chip in [
        "alertname=CheckoutBroken",
        "severity=page",
        "service=checkout",
    ] {
        assert!(chips.contains(&chip), "{chip} in {chips:?}");
    }
    // The card links to the service's logs and failing traces.
    let links = firing["links"].as_array().unwrap();
    let link_to = |name: &str| {
        links
            .iter()
            .find(|link| link[0] == name)
            .and_then(|link| link[1].as_str())
            .unwrap_or_else(|| panic!("no {name} link in {links:?}"))
            .to_owned()
    };
    assert!(link_to("Logs").starts_with("#/logs"), "{links:?}");
    assert!(link_to("Logs").contains("checkout"), "{links:?}");
    assert!(link_to("Traces").starts_with("#/traces"), "{links:?}");
    assert_eq!(
        js(&browser, "return window.__alertXss === undefined;").await,
        true
    );

    // The rule table: every rule with its state.
    let rows = js(
        &browser,
        "return Object.fromEntries([...document.querySelectorAll('.rule-row')].map(r => [r.dataset.rule, r.className]));",
    )
    .await;
    for (rule, class) in [
        ("CheckoutBroken", "state-firing"),
        ("SlowToFire", "state-pending"),
        ("NeverFires", "state-inactive"),
        ("ui:constant:sum", "rule-recording"),
    ] {
        let classes = rows[rule].as_str().unwrap_or_default();
        assert!(classes.contains(class), "{rule}: {classes:?} in {rows}");
    }
    let pending = js(
        &browser,
        "return document.querySelector('.alert-card.state-pending[data-alertname=\"SlowToFire\"]') !== null;",
    )
    .await;
    assert_eq!(pending, true, "the pending alert has its card");
    screenshot(&browser, "alerts-firing.png").await;

    // The state filter, from the toolbar: only firing alerts and rules.
    let select = browser
        .find(Locator::Css("select[data-filter=\"state\"]"))
        .await
        .expect("the state filter");
    select
        .select_by_value("firing")
        .await
        .expect("choose firing");
    poll_until(
        "the view filtered to firing",
        Duration::from_secs(30),
        || async {
            let shown = js(
                &browser,
                "const v = document.querySelector('#view[data-view=\"alerts\"]'); \
                 return { hash: location.hash, loaded: v ? v.dataset.loaded : null, \
                   cards: [...document.querySelectorAll('.alert-card')].map(c => c.dataset.alertname), \
                   rules: [...document.querySelectorAll('.rule-row')].map(r => r.dataset.rule) };",
            )
            .await;
            let filtered = serde_json::json!(["CheckoutBroken"]);
            match shown["hash"].as_str().unwrap_or_default().contains("state=firing")
                && shown["loaded"] == "1"
                && shown["cards"] == filtered
                && shown["rules"] == filtered
            {
                true => Ok(Some(())),
                false => Err(format!("shown: {shown}")),
            }
        },
    )
    .await;
    let _ = browser.close().await;
}

/// Paging, zooming, and the query saved and turned into an alert from the
/// Logs view (issue 23).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_more_pages_through_every_record_and_a_drag_on_the_histogram_zooms() {
    const RECORDS: u64 = 250;
    const SPACING_S: u64 = 6;
    let data_dir = tempfile::tempdir().unwrap();
    let collector =
        sightline_tests::CollectorProcess::start(&data_dir.path().join("collector"), &[]).await;
    // 250 records, one every 6 s over the last 25 minutes, newest first.
    let now_ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let records: Vec<serde_json::Value> = (0..RECORDS)
        .map(|index| {
            serde_json::json!({
                "timeUnixNano": (now_ns - (index * SPACING_S + 30) * 1_000_000_000).to_string(),
                "severityText": "INFO", "severityNumber": 9,
                "body": {"stringValue": format!("pager record {index:03}")},
            })
        })
        .collect();
    let payload = serde_json::json!({"resourceLogs": [{
        "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "pager"}}]},
        "scopeLogs": [{"scope": {}, "logRecords": records}],
    }]});
    let response = reqwest::Client::new()
        .post(collector.otlp_http_url("/v1/logs"))
        .json(&payload)
        .send()
        .await
        .expect("OTLP/HTTP answers");
    assert!(response.status().is_success(), "{}", response.status());
    poll_until(
        "the records to be searchable",
        Duration::from_secs(30),
        || async {
            let answer: serde_json::Value =
                reqwest::get(collector.url("/api/logs?q=pager&limit=1"))
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
            match answer["total_hits"].as_u64() {
                Some(RECORDS) => Ok(Some(())),
                other => Err(format!("total {other:?}")),
            }
        },
    )
    .await;

    let ui = collector.url("/");
    let (_driver, browser) = start_browser().await;
    open_view(&browser, &ui, "logs?q=pager&from=now-1h&to=now", "logs").await;
    let rows_script = "return { status: document.querySelector('#status').textContent, \
         more: !document.querySelector('#load-more').hidden, \
         bodies: [...document.querySelectorAll('#results tr.log-row')].map(r => r.cells[3].textContent) };";
    let expect_rows = |shown: u64| {
        let browser = browser.clone();
        async move {
            poll_until(
                &format!("{shown} rows"),
                Duration::from_secs(30),
                || async {
                    let page = js(&browser, rows_script).await;
                    match page["bodies"].as_array().map(Vec::len) {
                        Some(count) if count as u64 == shown => Ok(Some(page)),
                        _ => Err(format!("{page}")),
                    }
                },
            )
            .await
        }
    };

    // Load more, until every record is shown once, newest first.
    let mut page = expect_rows(100).await;
    for shown in [200, RECORDS] {
        assert_eq!(page["more"], true, "{page}");
        assert!(
            page["status"]
                .as_str()
                .unwrap()
                .contains(&format!("{RECORDS} matching records")),
            "{page}"
        );
        browser
            .find(Locator::Css("#load-more"))
            .await
            .expect("the load more button")
            .click()
            .await
            .expect("click load more");
        page = expect_rows(shown).await;
    }
    assert_eq!(page["more"], false, "no more to load: {page}");
    let bodies: Vec<String> = page["bodies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|body| body.as_str().unwrap().trim().to_owned())
        .collect();
    let expected: Vec<String> = (0..RECORDS)
        .map(|index| format!("pager record {index:03}"))
        .collect();
    assert_eq!(bodies, expected, "every record once, newest first");

    // Drag across the middle of the histogram: the view zooms to that span.
    let plot = browser
        .find(Locator::Css("#histogram .u-over"))
        .await
        .expect("the histogram's plot area");
    let width = js(
        &browser,
        "return document.querySelector('#histogram .u-over').getBoundingClientRect().width;",
    )
    .await
    .as_f64()
    .unwrap();
    use fantoccini::actions::InputSource;
    let drag = fantoccini::actions::MouseActions::new("drag".into())
        .then(fantoccini::actions::PointerAction::MoveToElement {
            element: plot.clone(),
            duration: None,
            x: -width * 0.25,
            y: 0.0,
        })
        .then(fantoccini::actions::PointerAction::Down {
            button: fantoccini::actions::MOUSE_BUTTON_LEFT,
        })
        .then(fantoccini::actions::PointerAction::MoveToElement {
            element: plot,
            duration: Some(Duration::from_millis(200)),
            x: width * 0.1,
            y: 0.0,
        })
        .then(fantoccini::actions::PointerAction::Up {
            button: fantoccini::actions::MOUSE_BUTTON_LEFT,
        });
    browser
        .perform_actions(drag)
        .await
        .expect("drag on the histogram");
    let zoomed = poll_until("the zoomed view", Duration::from_secs(30), || async {
        let state = js(
            &browser,
            "const p = new URLSearchParams(location.hash.split('?')[1] || ''); \
             const v = document.querySelector('#view[data-view=\"logs\"]'); \
             return { from: p.get('from'), to: p.get('to'), loaded: v ? v.dataset.loaded : null, \
               status: (document.querySelector('#status') || {}).textContent || '' };",
        )
        .await;
        let absolute = |key: &str| state[key].as_str().and_then(|v| v.parse::<u64>().ok());
        match (absolute("from"), absolute("to")) {
            (Some(_), Some(_))
                if state["loaded"] == "1"
                    && state["status"].as_str().unwrap_or("").contains("matching") =>
            {
                Ok(Some(state))
            }
            _ => Err(format!("{state}")),
        }
    })
    .await;
    let from_ms: u64 = zoomed["from"].as_str().unwrap().parse().unwrap();
    let to_ms: u64 = zoomed["to"].as_str().unwrap().parse().unwrap();
    assert!(from_ms < to_ms, "{zoomed}");
    let status = zoomed["status"].as_str().unwrap();
    let matching: u64 = status
        .split_whitespace()
        .next()
        .and_then(|count| count.parse().ok())
        .unwrap_or_else(|| panic!("a count in {status:?}"));
    assert!(
        (1..RECORDS).contains(&matching),
        "the zoomed span holds some of the records, not all: {zoomed}"
    );
    // Exactly the records sent inside the chosen span.
    let inside = (0..RECORDS)
        .filter(|index| {
            let ms = (now_ns - (index * SPACING_S + 30) * 1_000_000_000) / 1_000_000;
            (from_ms..=to_ms).contains(&ms)
        })
        .count() as u64;
    assert!(
        matching.abs_diff(inside) <= 1,
        "{matching} shown, {inside} sent between {from_ms} and {to_ms}"
    );
    screenshot(&browser, "logs-zoomed.png").await;

    // Save the search, then "alert from this search": the counter's
    // history is every stored pager record, and the alert shows in the list.
    open_view(&browser, &ui, "logs?q=pager&from=now-1h&to=now", "logs").await;
    let click = |css: &'static str| {
        let browser = browser.clone();
        async move {
            browser
                .find(Locator::Css(css))
                .await
                .unwrap_or_else(|_| panic!("{css}"))
                .click()
                .await
                .unwrap_or_else(|_| panic!("click {css}"));
        }
    };
    // Clicked again if the view was drawn anew meanwhile (a click on the
    // view it replaced opens no form).
    wait_js(
        &browser,
        "the save form",
        Duration::from_secs(30),
        "if (document.querySelector('#saved-searches .save-form input[name=name]')) return true; \
         document.querySelector('#save-search')?.click(); return null;",
    )
    .await;
    browser
        .find(Locator::Css("#saved-searches .save-form input[name=name]"))
        .await
        .expect("the name field")
        .send_keys("Pager lines")
        .await
        .expect("type a name");
    click("#saved-searches .save-form button[type=submit]").await;
    wait_js(
        &browser,
        "the saved search listed",
        Duration::from_secs(30),
        "const item = document.querySelector('#saved-searches li[data-id=\"pager-lines\"]'); \
         return item && item.textContent.includes('pager') ? true : null;",
    )
    .await;
    click("#saved-searches li[data-id=\"pager-lines\"] .make-alert").await;
    let threshold = browser
        .find(Locator::Css(".alert-form input[name=threshold]"))
        .await
        .expect("the threshold field");
    threshold.clear().await.expect("clear the threshold");
    threshold.send_keys("1000").await.expect("type a threshold");
    click(".alert-form button[type=submit]").await;
    let made = wait_js(
        &browser,
        "the alert made",
        Duration::from_secs(30),
        "const made = document.querySelector('.saved-message .alert-made'); \
         const badge = document.querySelector('#saved-searches li[data-id=\"pager-lines\"] .alert-badge'); \
         return made && badge ? [made.textContent, badge.textContent] : null;",
    )
    .await;
    assert!(
        made[0]
            .as_str()
            .unwrap()
            .contains(&format!("history from {RECORDS} stored records")),
        "{made}"
    );
    assert!(
        made[1].as_str().unwrap().contains("more than 1000"),
        "{made}"
    );
    screenshot(&browser, "logs-saved-search-alert.png").await;
    let answer: serde_json::Value =
        reqwest::get(collector.url("/api/v1/query?query=search_pager_lines_total"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
    assert_eq!(
        answer["data"]["result"][0]["value"][1],
        RECORDS.to_string(),
        "the counter holds every stored record: {answer}"
    );

    // The Patterns tab: the 250 messages are one template, all of it in
    // the second half of the hour, so new since its middle (the view is
    // still the search for them).
    click("#patterns-button").await;
    let rows = wait_js(
        &browser,
        "the patterns table",
        Duration::from_secs(30),
        "const rows = [...document.querySelectorAll('#patterns-table tr.pattern-row')]; \
         return rows.length ? rows.map(r => [...r.cells].slice(0, 4).map(c => c.textContent.trim())) : null;",
    )
    .await;
    assert_eq!(
        rows,
        serde_json::json!([["new", "pager", "pager record <*>", RECORDS.to_string()]]),
        "{rows}"
    );
    let status = js(
        &browser,
        "return document.querySelector('#status').textContent;",
    )
    .await;
    assert!(
        status.as_str().unwrap().starts_with(&format!(
            "1 pattern in {RECORDS} of {RECORDS} records since"
        )),
        "{status}"
    );
    screenshot(&browser, "logs-patterns.png").await;
    let _ = browser.close().await;
}

/// A dashboard file as users write them: one stat panel showing `value`,
/// refreshing every second over the last five minutes.
fn live_dashboard(title: &str, value: u32) -> String {
    serde_json::json!({
        "uid": "live",
        "title": title,
        "refresh": "1s",
        "time": { "from": "now-5m", "to": "now" },
        "panels": [{
            "id": 1,
            "type": "stat",
            "title": "Answer",
            "gridPos": { "x": 0, "y": 0, "w": 8, "h": 4 },
            "targets": [{ "expr": format!("vector({value})"), "refId": "A" }],
        }],
    })
    .to_string()
}

/// Dashboards are files read at run time, not part of the binary: one
/// dropped into `--dashboards-dir` is listed, an open dashboard draws its
/// panels again on its `refresh` interval, and a changed file shows in the
/// open page (no reload, no restart).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_refresh_and_a_changed_file_shows_without_a_restart() {
    let data_dir = tempfile::tempdir().unwrap();
    let dashboards = data_dir.path().join("dashboards");
    std::fs::create_dir(&dashboards).unwrap();
    let collector = sightline_tests::CollectorProcess::start(
        &data_dir.path().join("collector"),
        &["--dashboards-dir", dashboards.to_str().unwrap()],
    )
    .await;
    let ui = collector.url("/");
    let (_driver, browser) = start_browser().await;

    open_view(&browser, &ui, "dashboards", "dashboards").await;
    assert_eq!(
        js(
            &browser,
            "return document.querySelectorAll('.dashboard-item').length;"
        )
        .await,
        0
    );
    std::fs::write(dashboards.join("live.json"), live_dashboard("Live one", 42)).unwrap();
    // Another hash, so the list is asked for again.
    open_view(&browser, &ui, "dashboards?again=1", "dashboards").await;
    assert_eq!(
        js(
            &browser,
            "return [...document.querySelectorAll('.dashboard-item')].map(i => i.dataset.uid);"
        )
        .await,
        serde_json::json!(["live"])
    );

    open_view(&browser, &ui, "dashboard/live", "dashboard").await;
    let stat = "return document.querySelector('#dashboard-grid .stat-value')?.textContent ?? null;";
    assert_eq!(js(&browser, stat).await, "42");
    // Marks this page: a reload would lose it.
    js(&browser, "window.__samePage = 1; return 1;").await;
    wait_js(
        &browser,
        "two refreshes of the panels",
        Duration::from_secs(30),
        "return Number(document.querySelector('#view').dataset.refreshes || 0) >= 2;",
    )
    .await;

    std::fs::write(dashboards.join("live.json"), live_dashboard("Live two", 7)).unwrap();
    let changed = wait_js(
        &browser,
        "the changed file in the open dashboard",
        Duration::from_secs(30),
        "const v = document.querySelector('#view[data-view=\"dashboard\"]'); \
         const title = document.querySelector('.dashboard-header h2')?.textContent; \
         const stat = document.querySelector('#dashboard-grid .stat-value')?.textContent; \
         return v && v.dataset.loaded === '1' && title === 'Live two' && stat === '7' ? [title, stat, window.__samePage] : null;",
    )
    .await;
    assert_eq!(
        changed,
        serde_json::json!(["Live two", "7", 1]),
        "no page reload"
    );
    screenshot(&browser, "dashboard-live-reloaded.png").await;
    let _ = browser.close().await;
}

/// WebDriver's Tab and Enter keys.
const TAB: &str = "\u{E004}";
const ENTER: &str = "\u{E007}";

/// "A metrics explorer": a PromQL query typed with completion of metric
/// names, label names and label values from the API, drawn as a graph and
/// a table, kept in the URL (a reload shows the same), and a bad query
/// answered with Prometheus' message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metrics_explorer() {
    let data_dir = tempfile::tempdir().unwrap();
    let config = data_dir.path().join("prometheus.yml");
    std::fs::write(&config, "global:\n  scrape_interval: 1s\n").unwrap();
    let collector = sightline_tests::CollectorProcess::start(
        &data_dir.path().join("collector"),
        &["--config", config.to_str().unwrap()],
    )
    .await;
    // The collector scrapes itself: wait for its first scrape.
    let names_url = collector.url("/api/v1/label/__name__/values");
    poll_until("the self-scrape", Duration::from_secs(60), || async {
        let names: serde_json::Value = reqwest::get(&names_url)
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let known = names["data"].as_array().is_some_and(|names| {
            names
                .iter()
                .any(|n| n == "sightline_config_last_reload_successful")
        });
        Ok(known.then_some(()))
    })
    .await;
    let ui = collector.url("/");
    let (_driver, browser) = start_browser().await;
    open_view(&browser, &ui, "explore", "explore").await;
    let input = browser
        .find(Locator::Css("#explore-query"))
        .await
        .expect("the query input");

    // A metric name completes from the API (Tab takes the first).
    input
        .send_keys("sightline_config_last_reload_successf")
        .await
        .unwrap();
    // Until the list shows the name: an empty list (suggestions not drawn
    // yet) is not an answer.
    wait_js(
        &browser,
        "the metric name suggested",
        Duration::from_secs(30),
        "const v = [...document.querySelectorAll('#explore-suggestions:not([hidden]) li')].map(li => li.dataset.value); \
         return v.includes('sightline_config_last_reload_successful') ? v : null;",
    )
    .await;
    input.send_keys(TAB).await.unwrap();
    // Then a label name and a value, inside the braces.
    input.send_keys("{jo").await.unwrap();
    let labels = wait_js(
        &browser,
        "label name suggestions",
        Duration::from_secs(30),
        "const v = [...document.querySelectorAll('#explore-suggestions:not([hidden]) li')].map(li => li.dataset.value); return v.includes('job') ? v : null;",
    )
    .await;
    assert!(
        !labels.as_array().unwrap().iter().any(|l| l == "__name__"),
        "{labels}"
    );
    input.send_keys(TAB).await.unwrap();
    input.send_keys("=\"").await.unwrap();
    wait_js(
        &browser,
        "the job's values suggested",
        Duration::from_secs(30),
        "const v = [...document.querySelectorAll('#explore-suggestions:not([hidden]) li')].map(li => li.dataset.value); \
         return v.length === 1 && v[0] === 'sightline';",
    )
    .await;
    browser
        .find(Locator::Css("#explore-suggestions li"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    input.send_keys("\"}").await.unwrap();
    let typed = js(
        &browser,
        "return document.querySelector('#explore-query').value;",
    )
    .await;
    assert_eq!(
        typed,
        "sightline_config_last_reload_successful{job=\"sightline\"}"
    );

    // Enter runs it: the query goes into the URL, a graph and a table show.
    let _ = browser
        .execute(
            "document.querySelector('#view').dataset.stale = '1';",
            vec![],
        )
        .await;
    input.send_keys(ENTER).await.unwrap();
    let drawn = "const v = document.querySelector('#view[data-view=\"explore\"]:not([data-stale])'); \
         if (!v || v.dataset.loaded !== '1') return null; \
         const rows = [...document.querySelectorAll('#explore-table tbody tr')].map(r => [...r.cells].map(c => c.textContent)); \
         return [decodeURIComponent(location.hash), document.querySelectorAll('#explore-graph canvas').length, rows];";
    let shown = wait_js(
        &browser,
        "the query's graph and table",
        Duration::from_secs(30),
        drawn,
    )
    .await;
    assert!(
        shown[0]
            .as_str()
            .unwrap()
            .contains("q=sightline_config_last_reload_successful{job=\"sightline\"}"),
        "{shown}"
    );
    assert!(shown[1].as_u64().unwrap() >= 1, "a graph: {shown}");
    let rows = shown[2].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{shown}");
    assert!(
        rows[0][0]
            .as_str()
            .unwrap()
            .starts_with("sightline_config_last_reload_successful{"),
        "{shown}"
    );
    assert!(
        rows[0][0].as_str().unwrap().contains("job=\"sightline\""),
        "{shown}"
    );
    assert_eq!(rows[0][1], "1", "{shown}");
    screenshot(&browser, "explore.png").await;

    // The URL alone shows the same: a fresh page load.
    let url = browser.current_url().await.unwrap();
    browser.goto("about:blank").await.unwrap();
    browser.goto(url.as_str()).await.unwrap();
    let again = wait_js(
        &browser,
        "the same query after a reload",
        Duration::from_secs(30),
        drawn,
    )
    .await;
    assert_eq!(again[2], shown[2]);

    // A bad query says what Prometheus would.
    open_view(&browser, &ui, "explore?q=sum(rate(up[5m])", "explore").await;
    let error = js(
        &browser,
        "return document.querySelector('#explore-graph .error-box')?.textContent ?? null;",
    )
    .await;
    assert!(
        error.as_str().is_some_and(|e| e.contains("parse error")),
        "{error}"
    );
    let _ = browser.close().await;
}

/// Silences from the Alerts view, in a real Alertmanager: "Silence…" on a
/// firing alert opens a form with its labels as matchers; the silence is
/// created in Alertmanager (which then holds the alert as suppressed),
/// listed in the view, and expired from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silences_are_created_listed_and_expired_from_the_alerts_view() {
    let dir = tempfile::tempdir().unwrap();
    let (_alertmanager, am_port) = crate::alertmanager::start_alertmanager(dir.path()).await;
    let config = crate::alertmanager::write_config(
        dir.path(),
        &format!(
            "alerting:\n  alertmanagers: [{{ static_configs: [{{ targets: ['127.0.0.1:{am_port}'] }}] }}]\n"
        ),
        "groups:\n  - name: ui\n    interval: 1s\n    rules:\n      - alert: CheckoutBroken\n        expr: vector(3) > 0\n        labels: { severity: page, service: checkout }\n",
    );
    let collector = sightline_tests::CollectorProcess::start_with_env(
        &dir.path().join("collector"),
        &["--config", &config],
        &[("SIGHTLINE_ALERT_RESEND_DELAY", "1s")],
    )
    .await;
    let am = format!("http://127.0.0.1:{am_port}/api/v2");
    let http = reqwest::Client::new();
    let get = |url: String| {
        let http = http.clone();
        async move {
            http.get(&url)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json::<serde_json::Value>()
                .await
                .map_err(|e| e.to_string())
        }
    };
    // Alertmanager holds the alert, not silenced yet.
    poll_until(
        "the alert in Alertmanager",
        Duration::from_secs(60),
        || async {
            let alerts = get(format!("{am}/alerts")).await?;
            let held = alerts.as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == "CheckoutBroken" && a["status"]["state"] == "active"
                })
            });
            Ok(held.then_some(()))
        },
    )
    .await;

    let ui = collector.url("/");
    let (_driver, browser) = start_browser().await;
    open_view(&browser, &ui, "alerts", "alerts").await;
    wait_js(
        &browser,
        "the firing alert with its Silence button",
        Duration::from_secs(30),
        "return document.querySelector('.alert-card[data-alertname=\"CheckoutBroken\"] .silence-alert') !== null;",
    )
    .await;
    assert_eq!(
        js(
            &browser,
            "return document.querySelector('#silences').textContent.includes('No silences.');"
        )
        .await,
        true
    );
    browser
        .find(Locator::Css(
            ".alert-card[data-alertname=\"CheckoutBroken\"] .silence-alert",
        ))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let matchers = js(
        &browser,
        "return document.querySelector('.silence-form .silence-matchers').value;",
    )
    .await;
    let matchers = matchers.as_str().unwrap();
    for expected in [
        "alertname=\"CheckoutBroken\"",
        "service=\"checkout\"",
        "severity=\"page\"",
    ] {
        assert!(matchers.contains(expected), "{matchers}");
    }
    // Comment and author are required: Alertmanager refuses a silence without.
    browser
        .find(Locator::Css(".silence-form .silence-author"))
        .await
        .unwrap()
        .send_keys("oncall-ana")
        .await
        .unwrap();
    browser
        .find(Locator::Css(".silence-form .silence-comment"))
        .await
        .unwrap()
        .send_keys("rolling back checkout 1.4.2")
        .await
        .unwrap();
    let _ = browser
        .execute(
            "document.querySelector('#view').dataset.stale = '1';",
            vec![],
        )
        .await;
    browser
        .find(Locator::Css(".silence-form .silence-submit"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let listed = "const v = document.querySelector('#view[data-view=\"alerts\"]:not([data-stale])'); \
         if (!v || v.dataset.loaded !== '1') return null; \
         const rows = [...document.querySelectorAll('#silences .silence-row')]; \
         return rows.length ? rows.map(r => [r.dataset.silenceId, r.querySelector('.badge').textContent, r.querySelector('code').textContent, r.querySelector('.silence-comment-text').textContent]) : null;";
    let rows = wait_js(
        &browser,
        "the silence listed",
        Duration::from_secs(30),
        listed,
    )
    .await;
    let row = &rows[0];
    assert_eq!(row[1], "active", "{rows}");
    assert!(
        row[2]
            .as_str()
            .unwrap()
            .contains("alertname=\"CheckoutBroken\""),
        "{rows}"
    );
    assert_eq!(row[3], "rolling back checkout 1.4.2");
    let id = row[0].as_str().unwrap().to_string();
    assert_eq!(
        js(
            &browser,
            "return document.querySelector('.alert-card[data-alertname=\"CheckoutBroken\"] .badge.silence-state-active')?.textContent ?? null;"
        )
        .await,
        "silenced",
        "the alert card says it is silenced"
    );
    screenshot(&browser, "silence-created.png").await;

    // In Alertmanager itself: the silence, and the alert suppressed by it.
    let silence = get(format!("{am}/silence/{id}")).await.unwrap();
    assert_eq!(silence["status"]["state"], "active", "{silence}");
    assert_eq!(silence["createdBy"], "oncall-ana");
    poll_until("the alert suppressed", Duration::from_secs(30), || async {
        let alerts = get(format!("{am}/alerts?silenced=true")).await?;
        let suppressed = alerts.as_array().is_some_and(|alerts| {
            alerts.iter().any(|a| {
                a["labels"]["alertname"] == "CheckoutBroken"
                    && a["status"]["state"] == "suppressed"
                    && a["status"]["silencedBy"][0] == id.as_str()
            })
        });
        Ok(suppressed.then_some(()))
    })
    .await;

    // Expired from the view.
    let _ = browser
        .execute(
            "document.querySelector('#view').dataset.stale = '1';",
            vec![],
        )
        .await;
    browser
        .find(Locator::Css(&format!(
            "#silences .silence-row[data-silence-id=\"{id}\"] .silence-expire"
        )))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    let rows = wait_js(
        &browser,
        "the silence expired",
        Duration::from_secs(30),
        listed,
    )
    .await;
    assert_eq!(rows[0][1], "expired", "{rows}");
    let silence = get(format!("{am}/silence/{id}")).await.unwrap();
    assert_eq!(silence["status"]["state"], "expired", "{silence}");
    let _ = browser.close().await;
}

/// The dashboards the material describes, by uid: system health, per
/// service, business, infrastructure.
const MATERIAL_DASHBOARDS: [&str; 4] = [
    "sightline-overview",
    "sightline-service",
    "sightline-business",
    "sightline-infrastructure",
];

/// `(title, every expr)` of each panel of a shipped dashboard that is not
/// a row.
fn panels_of(uid: &str) -> Vec<(String, Vec<String>)> {
    for file in dashboard_files() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../dashboards")
            .join(&file);
        let dashboard: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        if dashboard["uid"] != uid {
            continue;
        }
        return dashboard["panels"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|panel| panel["type"] != "row")
            .map(|panel| {
                let exprs = panel["targets"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|target| target["expr"].as_str().map(str::to_string))
                    .collect();
                (panel["title"].as_str().unwrap().to_string(), exprs)
            })
            .collect();
    }
    panic!("no dashboard {uid} in dashboards/");
}

/// "The dashboards as described": on the demo with its traffic (and a
/// small latency fault on payment), every panel of the system health,
/// per-service, business and infrastructure dashboards draws data in the
/// browser: a chart, a number or table rows, never "no data". Container
/// panels are the exception: the demo runs its services as plain
/// processes, without container cgroups to read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboards_as_described() {
    let stack = DemoStack::start_with(&[
        "--rate",
        "3",
        "--scrape-interval",
        "1s",
        "--fault",
        "payment:latency=20ms@0.2",
    ])
    .await;
    let base = stack.ui_url("/");
    let (_driver, browser) = start_browser().await;
    for uid in MATERIAL_DASHBOARDS {
        let wanted: Vec<String> = panels_of(uid)
            .into_iter()
            .filter(|(_, exprs)| !exprs.iter().all(|expr| expr.contains("container_")))
            .map(|(title, _)| title)
            .collect();
        assert!(wanted.len() >= 4, "{uid}: {wanted:?}");
        // A new hash per attempt, so each one renders the dashboard anew.
        let attempt = std::sync::atomic::AtomicUsize::new(0);
        let hash = || {
            let n = attempt.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            format!("dashboard/{uid}?from=now-15m&var-service=payment&attempt={n}")
        };
        let script = format!(
            "const wanted = {}; \
             const state = {{}}; \
             for (const box of document.querySelectorAll('#dashboard-grid .panel')) {{ \
               const title = box.querySelector('.panel-title')?.textContent; \
               const body = box.querySelector('.panel-body'); \
               if (!title || !body) continue; \
               const numbers = [...body.querySelectorAll('.stat-value')].map(v => v.textContent); \
               const drawn = body.querySelector('canvas') !== null \
                 || (numbers.length > 0 && numbers.every(n => n !== '–')) \
                 || body.querySelectorAll('tbody tr').length > 0; \
               const verdict = drawn ? 'drawn' : (body.textContent || 'nothing').slice(0, 80); \
               if (state[title] === undefined || state[title] === 'drawn') state[title] = verdict; \
             }} \
             const missing = wanted.filter(t => state[t] !== 'drawn').map(t => `${{t}}: ${{state[t]}}`); \
             return missing;",
            serde_json::to_string(&wanted).unwrap()
        );
        poll_until(
            &format!("every panel of {uid} drawing data"),
            Duration::from_secs(120),
            || async {
                open_view(&browser, &base, &hash(), "dashboard").await;
                let missing = js(&browser, &script).await;
                if missing.as_array().is_some_and(Vec::is_empty) {
                    Ok(Some(()))
                } else {
                    Err(format!("{uid}: {missing}"))
                }
            },
        )
        .await;
        screenshot(&browser, &format!("material-{uid}.png")).await;
    }
    let _ = browser.close().await;
}

/// The UI's main flows (search, the trace waterfall, the request view)
/// on the second node of a 3-node cluster, the data sent to the first and
/// read from published splits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_on_the_second_node_of_a_cluster_searches_and_opens_traces_and_requests() {
    use crate::cluster_queries::{
        MS, logs_payload, now_nanos, post, spans_payload, trace_id, wait_published,
    };
    use sightline_tests::engines::{ClusterEngines, ClusterSettings};

    let engines = ClusterEngines::start().await;
    let dir = tempfile::tempdir().unwrap();
    let nodes = engines
        .start_collectors(3, dir.path(), &ClusterSettings::default())
        .await;
    let http = reqwest::Client::new();
    let metastore = sightline_cluster::Metastore::connect(&engines.postgres.url())
        .await
        .unwrap();
    let now = now_nanos();
    let base = now - 600_000 * MS;
    post(&http, &nodes[0], "/v1/logs", &logs_payload(base, 0..80)).await;
    post(&http, &nodes[0], "/v1/traces", &spans_payload(base, false)).await;
    wait_published(&metastore, 80, 23).await;

    let ui = nodes[1].url("/");
    let (_driver, browser) = start_browser().await;
    // Search: the two records of request req-2 (records 12 and 48).
    open_view(&browser, &ui, "logs?q=request_id:req-2&from=now-1h", "logs").await;
    let rows = wait_js(
        &browser,
        "both records of req-2",
        Duration::from_secs(30),
        "const rows = [...document.querySelectorAll('#results tbody tr.log-row')].map(r => r.textContent); \
         return rows.length === 2 ? rows : null;",
    )
    .await;
    for row in rows.as_array().unwrap() {
        assert!(row.as_str().unwrap().contains("req-2"), "{rows}");
    }
    screenshot(&browser, "cluster-logs-search.png").await;

    // The waterfall: the four services' spans of trace 2.
    open_view(&browser, &ui, &format!("trace/{}", trace_id(2)), "trace").await;
    let services = js(
        &browser,
        "return [...document.querySelectorAll('#waterfall .span-row[data-span-id]')].map(r => r.textContent);",
    )
    .await;
    let services = services.as_array().expect("span rows").clone();
    assert_eq!(services.len(), 4, "{services:?}");
    for service in ["gateway", "checkout", "payment", "inventory"] {
        assert!(
            services
                .iter()
                .any(|row| row.as_str().unwrap_or_default().contains(service)),
            "{service} in {services:?}"
        );
    }
    screenshot(&browser, "cluster-trace-waterfall.png").await;

    // The request view: the request's logs and its trace's spans.
    open_view(&browser, &ui, "request/req-2", "request").await;
    let view = js(
        &browser,
        "return { logs: document.querySelectorAll('#request-timeline .story-log').length, \
                  spans: document.querySelectorAll('#request-timeline .story-span').length, \
                  traces: [...document.querySelectorAll('.story-traces a.trace-link')].map(a => a.textContent) };",
    )
    .await;
    assert_eq!(view["logs"], 2, "{view}");
    assert_eq!(view["spans"], 4, "{view}");
    assert!(
        view["traces"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t == trace_id(2).as_str())),
        "{view}"
    );
    screenshot(&browser, "cluster-request.png").await;
    browser.close().await.expect("close the browser");
}

/// The demo's payment latency alert, fast: the shipped rules' shape (a
/// recorded p99 per service, an alert on it) over 15 s instead of 5 min,
/// and over 1 s (the provider's natural tail stays under it, so the alert
/// starts with the fault).
const FAST_LATENCY_RULES: &str = r#"
groups:
  - name: e2e-latency
    interval: 1s
    rules:
      - record: e2e:http_request_duration_seconds:p99_15s
        expr: |
          histogram_quantile(0.99,
            sum by (service, le) (rate(http_request_duration_seconds_bucket[15s])))
      - alert: PaymentLatencyE2E
        expr: e2e:http_request_duration_seconds:p99_15s{service="payment"} > 1
        for: 2s
        labels:
          severity: page
        annotations:
          summary: "payment: p99 latency {{ $value | humanizeDuration }}"
"#;

/// From an alert to its cause: a slow card provider (payment's latency
/// fault) fires the latency alert; its incident view shows exemplars whose
/// traces hold the slow payment span, the worst order against a healthy
/// one naming the provider call, the provider's "over budget" log line as a
/// new pattern, and the worst order's story.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alert_opens_its_incident_view_with_the_cause() {
    let (_rules, stack) = crate::shop::stack_with_fast_rules(FAST_LATENCY_RULES).await;
    let token = stack.login("u-incident").await;
    let stop_orders = crate::shop::keep_ordering(&stack, token);
    // Healthy orders first: the "before" of the patterns (which ends the
    // alert's 15 s lookback before it fired) and the healthy request to
    // compare with.
    tokio::time::sleep(Duration::from_secs(30)).await;
    stack
        .set_faults("payment", serde_json::json!({"latency_ms": 1500}))
        .await;
    let http = reqwest::Client::new();
    let alerts_url = stack.ui_url("/api/v1/alerts");
    poll_until(
        "the latency alert firing",
        Duration::from_secs(120),
        || async {
            let body = sightline_tests::get_json(&http, &alerts_url).await?;
            let firing = body["data"]["alerts"].as_array().is_some_and(|alerts| {
                alerts.iter().any(|a| {
                    a["labels"]["alertname"] == "PaymentLatencyE2E" && a["state"] == "firing"
                })
            });
            if firing {
                Ok(Some(()))
            } else {
                Err(format!("alerts: {body}"))
            }
        },
    )
    .await;
    // A few more slow orders while the page is opened.
    tokio::time::sleep(Duration::from_secs(3)).await;

    let (_driver, browser) = start_browser().await;
    let base = stack.ui_url("/");
    open_view(&browser, &base, "alerts", "alerts").await;
    let href = wait_js(
        &browser,
        "the alert's incident link",
        Duration::from_secs(30),
        "const card = document.querySelector('.alert-card[data-alertname=\"PaymentLatencyE2E\"]'); \
         const link = card && card.querySelector('a.incident-link'); return link ? link.getAttribute('href') : null;",
    )
    .await;
    let href = href.as_str().unwrap().to_string();
    assert!(
        href.starts_with("#/incident?alert=PaymentLatencyE2E"),
        "{href}"
    );
    assert!(href.contains("label=service%3Dpayment"), "{href}");
    let _ = js(
        &browser,
        "document.querySelector('#view').dataset.stale = '1'; \
         document.querySelector('.alert-card[data-alertname=\"PaymentLatencyE2E\"] a.incident-link').click(); return true;",
    )
    .await;
    let state = wait_js(
        &browser,
        "the incident view",
        Duration::from_secs(60),
        "const v = document.querySelector('#view[data-view=\"incident\"]:not([data-stale])'); \
         return v && v.dataset.loaded ? [v.dataset.loaded, v.textContent.slice(0, 300)] : null;",
    )
    .await;
    assert_eq!(state[0], "1", "{state}");
    // The worst request's story arrives after the rest.
    wait_js(
        &browser,
        "the worst request's story",
        Duration::from_secs(30),
        "return document.querySelectorAll('#incident-story .story-row').length > 0;",
    )
    .await;
    let found = js(
        &browser,
        "return { \
           exemplars: [...document.querySelectorAll('#incident-graph a.exemplar')].filter(a => !a.hidden).map(a => a.getAttribute('href')), \
           difference: document.querySelector('#incident-comparison #compare-difference')?.textContent || '', \
           patterns: [...document.querySelectorAll('#incident-patterns-table tr.incident-pattern')].map(r => [r.dataset.change, r.dataset.service, r.querySelector('code').textContent]), \
           worst: document.querySelector('#failing-table tr.worst')?.dataset.trace || '', \
           story: document.querySelectorAll('#incident-story .story-row').length };",
    )
    .await;
    // What building the view took, part by part (reported in BENCHMARKS.md).
    let api = stack.ui_url(&format!("/api{}", &href[1..]));
    let built = sightline_tests::get_json(&http, &api)
        .await
        .unwrap_or_default();
    eprintln!(
        "incident view built in {} ms: {}",
        built["took_ms"], built["timings"]
    );
    // The whole page for the README: a window as tall as the view.
    let height = js(&browser, "return document.documentElement.scrollHeight;")
        .await
        .as_u64()
        .unwrap_or(900)
        .clamp(900, 4000);
    let _ = browser.set_window_size(1400, height as u32).await;
    screenshot(&browser, "incident.png").await;
    // Exemplar points, and the traces behind them hold the slow payment span.
    let exemplars = found["exemplars"].as_array().expect("exemplar links");
    assert!(!exemplars.is_empty(), "{found}");
    let mut slow_payment = false;
    for href in exemplars {
        let trace_id = href.as_str().unwrap().trim_start_matches("#/request/");
        let trace =
            sightline_tests::get_json(&http, &stack.ui_url(&format!("/api/traces/{trace_id}")))
                .await
                .unwrap_or_default();
        let processes = &trace["data"][0]["processes"];
        slow_payment |= trace["data"][0]["spans"].as_array().is_some_and(|spans| {
            spans.iter().any(|span| {
                let process = span["processID"].as_str().unwrap_or_default();
                processes[process]["serviceName"] == "payment"
                    && span["duration"].as_u64().unwrap_or_default() > 1_000_000
            })
        });
    }
    assert!(
        slow_payment,
        "an exemplar's trace holds a payment span over 1 s: {found}"
    );
    // The comparison names the provider call.
    let difference = found["difference"].as_str().unwrap_or_default();
    assert!(
        difference.contains("payment provider.authorize"),
        "{difference}"
    );
    // The provider's "over budget" line is a new pattern.
    let patterns = found["patterns"].as_array().unwrap();
    assert!(
        patterns.iter().any(|p| p[0] == "new"
            && p[1] == "payment"
            && p[2]
                .as_str()
                .unwrap_or_default()
                .contains("card provider answered after")),
        "{found}"
    );
    // The worst request's story, on one timeline.
    assert_eq!(
        found["worst"].as_str().unwrap_or_default().len(),
        32,
        "{found}"
    );
    assert!(found["story"].as_u64().unwrap_or_default() > 3, "{found}");
    let _ = stop_orders.send(());
    stack.set_faults("payment", serde_json::json!({})).await;
    browser.close().await.expect("close the browser");
}
