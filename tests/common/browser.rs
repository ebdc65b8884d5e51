//! A real browser for the HTML tests: headless Chromium (Debian's `chromium`, installed by
//! `.ci/run`), driven over the DevTools protocol by `chromiumoxide`. A page is opened in a
//! fresh profile; the test gets the DOM as rendered, every request the page itself made
//! (`Network.requestWillBeSent` of its own target: Chromium's own background traffic is not
//! the page's), and optionally a full-page screenshot.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::cdp::browser_protocol::network::EventRequestWillBeSent;
use chromiumoxide::page::ScreenshotParams;
use tokio_stream::StreamExt as _;

use super::infra::tool;

/// Bounds each step with the browser; never expected to elapse.
const GUARD: Duration = Duration::from_secs(60);

pub fn chromium() -> PathBuf {
    tool(
        "CHROMIUM",
        &[
            PathBuf::from("/usr/bin/chromium"),
            PathBuf::from("/usr/bin/chromium-browser"),
        ],
    )
}

/// What a browser made of a page.
pub struct Rendered {
    /// The document as rendered (`document.documentElement.outerHTML`).
    pub dom: String,
    /// The URL of every request the page made, its own first.
    pub requests: Vec<String>,
}

async fn guard<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer from the browser within {GUARD:?}"))
}

/// Opens `url` in headless Chromium, in a window `width` x `height`; with `screenshot`, a PNG of
/// that window there.
pub async fn open(url: &str, (width, height): (u32, u32), screenshot: Option<&Path>) -> Rendered {
    let profile = tempfile::tempdir().unwrap();
    let config = BrowserConfig::builder()
        .chrome_executable(chromium())
        .no_sandbox()
        .user_data_dir(profile.path())
        .window_size(width, height)
        .viewport(None)
        .arg("--disable-gpu")
        .arg("--hide-scrollbars")
        .build()
        .expect("a browser configuration");
    let (mut browser, mut handler) = guard("launch", Browser::launch(config))
        .await
        .expect("chromium starts");
    let events = tokio::spawn(async move { while handler.next().await.is_some() {} });
    let page = guard("new page", browser.new_page("about:blank"))
        .await
        .unwrap();
    let mut requests = page
        .event_listener::<EventRequestWillBeSent>()
        .await
        .unwrap();
    guard("load", page.goto(url)).await.expect("the page loads");
    let dom = guard("content", page.content()).await.unwrap();
    if let Some(file) = screenshot {
        let params = ScreenshotParams::builder().build();
        guard("screenshot", page.save_screenshot(params, file))
            .await
            .expect("a screenshot");
    }
    guard("close", browser.close()).await.unwrap();
    let _ = guard("exit", browser.wait()).await;
    events.abort();
    // The browser is gone: its events end.
    let mut urls = Vec::new();
    while let Some(e) = guard("events", requests.next()).await {
        urls.push(e.request.url.clone());
    }
    Rendered {
        dom,
        requests: urls,
    }
}
