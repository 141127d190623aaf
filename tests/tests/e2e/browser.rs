//! The UI in a real headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over WebDriver: search for a request id, see
//! both services' lines, open the trace.

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
        url.as_str().contains("request_id"),
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
    let screenshot = browser.screenshot().await.expect("screenshot");
    std::fs::write(artifacts_dir().join("trace-waterfall.png"), screenshot)
        .expect("write screenshot");
    browser.close().await.expect("close the browser");
}
