//! `report.html` opened in a real headless browser (Debian's Chromium): it renders its table and every
//! plot with no console message and no network request. The harness is checked on a page that does both.
//!
//! Without a browser the tests say so and pass, unless `SERVESIM_REQUIRE_BROWSER` is set (CI sets it and
//! installs `chromium`); `SERVESIM_CHROMIUM` names another binary. `SERVESIM_SCREENSHOT_DIR`, when set,
//! receives each page's screenshot to look at.

use crate::common::config;
use servesim::capacity::{capacity, Goal};
use servesim::report::{compare, plot};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("SERVESIM_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(
            [
                "/usr/bin/chromium",
                "/usr/bin/chromium-browser",
                "/usr/bin/google-chrome",
            ]
            .map(PathBuf::from),
        )
        .find(|p| p.exists());
    if found.is_none() {
        assert!(
            std::env::var_os("SERVESIM_REQUIRE_BROWSER").is_none(),
            "SERVESIM_REQUIRE_BROWSER is set but no Chromium was found: install Debian's `chromium` \
             or set SERVESIM_CHROMIUM"
        );
        eprintln!("no Chromium found: report.html not opened in a browser (install `chromium`)");
    }
    found
}

/// What a page did in the browser.
struct Opened {
    /// Console messages the page produced (errors, warnings, logs, refused loads).
    console: Vec<String>,
    /// URLs the page asked the network for (Chromium's own background requests, whose initiator is "not
    /// an origin", left out).
    requests: Vec<String>,
    /// The document as the browser parsed it.
    dom: String,
}

/// Runs `browser` headless on `args` plus the page, with a time limit; returns stdout and stderr.
fn headless(browser: &Path, dir: &Path, args: &[String], page: &Path) -> (String, String) {
    let mut cmd = Command::new(browser);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ])
    .arg(format!(
        "--user-data-dir={}",
        tempfile::tempdir_in(dir).unwrap().keep().display()
    ))
    .args(args)
    .arg(format!("file://{}", page.display()))
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the browser");
    let (mut out, mut err) = (child.stdout.take().unwrap(), child.stderr.take().unwrap());
    let o = std::thread::spawn(move || std::io::read_to_string(&mut out).unwrap_or_default());
    let e = std::thread::spawn(move || std::io::read_to_string(&mut err).unwrap_or_default());
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser did not finish {} in 120 s", page.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    (o.join().unwrap(), e.join().unwrap())
}

/// Opens `page` in `browser`: a screenshot (to `shot`), its console and network log, then its DOM. The
/// browser's profile and log go to `work`, not beside the page.
fn open(browser: &Path, page: &Path, shot: &Path, work: &Path) -> Opened {
    let dir = work;
    let net = dir.join("netlog.json");
    let (_, err) = headless(
        browser,
        dir,
        &[
            format!("--log-net-log={}", net.display()),
            format!("--screenshot={}", shot.display()),
            "--window-size=1280,2400".into(),
        ],
        page,
    );
    let console = err
        .lines()
        .filter(|l| l.contains(":CONSOLE"))
        .map(str::to_string)
        .collect();
    let text = std::fs::read_to_string(&net).expect("the browser writes its network log");
    // A log cut short at exit lacks its closing brackets.
    let log: serde_json::Value = serde_json::from_str(&text)
        .or_else(|_| serde_json::from_str(&format!("{}]}}", text.trim_end().trim_end_matches(','))))
        .expect("the network log is JSON");
    let mut requests: Vec<String> = log["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| {
            let p = &e["params"];
            let (url, initiator) = (p["url"].as_str()?, p["initiator"].as_str()?);
            (initiator != "not an origin").then(|| url.to_string())
        })
        .collect();
    requests.dedup();
    let (dom, _) = headless(browser, dir, &["--dump-dom".into()], page);
    Opened {
        console,
        requests,
        dom,
    }
}

fn keep_screenshot(shot: &Path, name: &str) {
    if let Some(d) = std::env::var_os("SERVESIM_SCREENSHOT_DIR") {
        std::fs::copy(shot, Path::new(&d).join(name)).unwrap();
    }
}

/// What in a page's source would load anything: a file beside it (which Chromium reads without the
/// network log) as much as a URL.
fn loads(html: &str) -> Vec<&'static str> {
    [
        "src=", "href=", "url(", "@import", "<link", "<script", "<iframe", "<object",
    ]
    .into_iter()
    .filter(|p| html.to_ascii_lowercase().contains(p))
    .collect()
}

/// Checks the page: no console message, no request, a PNG screenshot.
fn assert_clean(o: &Opened, shot: &Path) {
    assert!(o.console.is_empty(), "console: {:#?}", o.console);
    assert!(o.requests.is_empty(), "network: {:#?}", o.requests);
    let png = std::fs::read(shot).expect("a screenshot");
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
}

#[test]
fn the_harness_sees_console_errors_and_network_requests() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let page = tmp.path().join("bad.html");
    let html = "<!doctype html><title>bad</title><img src=\"https://example.invalid/x.png\">\
                <img src=\"beside.png\"><script>console.error('boom'); missing();</script>";
    std::fs::write(&page, html).unwrap();
    // A file beside the page is caught in the source (the browser reads it without the network log).
    assert_eq!(loads(html), ["src=", "<script"]);
    let o = open(&browser, &page, &tmp.path().join("bad.png"), tmp.path());
    assert!(
        o.console.iter().any(|l| l.contains("boom")),
        "{:?}",
        o.console
    );
    assert!(o
        .console
        .iter()
        .any(|l| l.contains("missing is not defined")));
    assert_eq!(o.requests, ["https://example.invalid/x.png"]);
}

#[test]
fn the_compare_report_renders_offline_with_no_console_errors() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let o = compare(&crate::compare::opts(
        tmp.path(),
        2,
        &["engine.prefix_caching=true,false"],
        plot::Format::Svg,
    ))
    .unwrap();
    let page = o.out_dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    // Five plots inline, nothing loaded from beside it or anywhere.
    assert_eq!(html.matches("<svg ").count(), 5);
    assert!(loads(&html).is_empty(), "{:?}", loads(&html));
    let shot = tmp.path().join("compare.png");
    let opened = open(&browser, &page, &shot, tmp.path());
    assert_clean(&opened, &shot);
    keep_screenshot(&shot, "compare-report.png");
    // The browser parsed the table (a row per metric, a column per variant), every plot and the
    // settings of each variant.
    let dom = &opened.dom;
    assert_eq!(dom.matches("<svg ").count(), 5, "{dom}");
    assert_eq!(
        dom.matches("<tr>").count(),
        1 + servesim::report::METRICS.len() + 1 + 2
    );
    for v in ["prefix_caching=true", "prefix_caching=false"] {
        assert!(
            dom.contains(&format!("resolved.toml of <code>{v}</code>")),
            "{v}"
        );
    }
    // Two seeds: paired differences with their intervals.
    assert!(dom.contains("Δ "), "{dom}");
}

#[test]
fn the_capacity_report_renders_offline_with_no_console_errors() {
    let Some(browser) = chromium() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = config(
        &crate::capacity::md1(5.0, 600.0, "[slo]\nqueue_mean_s = 0.1"),
        &[],
    );
    let mut opts = crate::capacity::opts(Goal::MaxRate, 2, 0.05, &tmp.path().join("cap"));
    opts.plot = Some(plot::Format::Svg);
    let out = capacity(&cfg, &opts).unwrap();
    let page = out.out_dir.join("report.html");
    let html = std::fs::read_to_string(&page).unwrap();
    assert!(loads(&html).is_empty(), "{:?}", loads(&html));
    let shot = tmp.path().join("capacity.png");
    let opened = open(&browser, &page, &shot, tmp.path());
    assert_clean(&opened, &shot);
    keep_screenshot(&shot, "capacity-report.png");
    // The answer line, the probe plot and a row per probe.
    let answer = out.answer.lines().next().unwrap();
    let escaped = answer
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    assert!(opened.dom.contains(&escaped), "{answer}");
    assert_eq!(opened.dom.matches("<svg ").count(), 1);
    assert_eq!(opened.dom.matches("<tr>").count(), 1 + out.probes.len());
}
