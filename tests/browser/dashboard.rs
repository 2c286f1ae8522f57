//! The admin dashboard: an admin signs in (cookie), sees a user come online and go offline
//! without reloading, ends a session; the seed's admin snippets 3 and 4 run unchanged in the
//! signed-in page; a cross-origin POST does not act on the admin's session; the page fits a
//! phone.

use std::time::Duration;

use lastseen::settings::Settings;
use serde_json::{Value, json};

use crate::harness::{Browser, Driver, TestServer, browser_available, register};

/// Runs `body` (which may `await`) in the page and returns what it returns.
async fn run_async(page: &Browser, body: &str) -> Value {
    let script = format!(
        "const done = arguments[arguments.length - 1];
         (async () => {{ {body} }})().then(done, (e) => done('error: ' + e));"
    );
    page.call(
        reqwest::Method::POST,
        "/execute/async",
        json!({"script": script, "args": []}),
    )
    .await
}

fn row_of(name: &str) -> String {
    format!(
        "[...document.querySelectorAll('#users tr')].find(r => r.querySelector('b')?.textContent === '{name}')"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_watches_users_come_and_go_live_and_ends_a_session() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let base = server.base.clone();
    let settings = Settings {
        database_url: format!(
            "sqlite://{}",
            server.dir.path().join("browser.db").display()
        ),
        ..Settings::default()
    };
    let mut password = "password123\n".as_bytes();
    lastseen::commands::create_user(&settings, "root", true, Some(&mut password))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    register(&client, &base, "alice").await;

    let driver = Driver::start().await;
    let page = driver.browser(&server.profile("admin")).await;
    page.open(&format!("{base}/admin/")).await;
    page.wait_for(
        "the sign-in form",
        "return !document.getElementById('login').classList.contains('hidden')",
    )
    .await;
    page.type_into("#username", "root").await;
    page.type_into("#password", "password123").await;
    page.click("#login-form button[type=submit]").await;
    page.wait_for(
        "the live dashboard",
        "return !document.getElementById('dashboard').classList.contains('hidden') \
         && document.getElementById('live').textContent === 'live'",
    )
    .await;
    page.wait_for(
        "one user online (the admin)",
        "return document.getElementById('online-count').textContent === '1'",
    )
    .await;
    let stored = page
        .eval("return JSON.stringify([localStorage.length, sessionStorage.length])")
        .await;
    assert_eq!(stored, "[0,0]", "no token in page storage");

    // The seed's snippets 3 and 4, as written, in the signed-in page (the cookie authenticates).
    let snippet_3 = run_async(
        &page,
        "const response = await fetch('/api/users/admin/users/online/');
         const data = await response.json();
         console.log(`${data.online_count} users online`);
         data.online_users.forEach(user => {
           console.log(`${user.username}: ${user.online_status}`);
         });
         return `${data.online_count} users online: ` + data.online_users.map(u => u.username).join(',');",
    )
    .await;
    assert_eq!(snippet_3, "1 users online: root");
    let snippet_4 = run_async(
        &page,
        "const response = await fetch('/api/users/admin/users/1/online-status/');
         const data = await response.json();
         console.log(`${data.username} is ${data.online_status}`);
         return `${data.username} is ${data.online_status}`;",
    )
    .await;
    assert_eq!(snippet_4, "root is online");

    // Alice logs in elsewhere: she appears without a reload.
    let login: Value = client
        .post(format!("{base}/api/users/login/"))
        .json(&json!({"username": "alice", "password": "password123",
                      "device": {"platform": "mobile", "name": "Alice's phone"}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alice_token = login["access"].as_str().unwrap().to_owned();
    let alice_row = row_of("alice");
    page.wait_for(
        "alice to appear online",
        &format!(
            "return !!{alice_row} && {alice_row}.querySelector('.dot').classList.contains('active') \
             && document.getElementById('online-count').textContent === '2'"
        ),
    )
    .await;

    // Her page shows her phone; ending that session logs her out and she disappears.
    page.eval(&format!("{alice_row}.click(); return true"))
        .await;
    page.wait_for(
        "alice's page with her phone",
        "return document.getElementById('sessions').textContent.includes(\"Alice's phone\")",
    )
    .await;
    page.click("#sessions button.danger").await;
    page.wait_for(
        "alice to go offline",
        &format!(
            "return !{alice_row} && document.getElementById('online-count').textContent === '1'"
        ),
    )
    .await;
    let me = client
        .get(format!("{base}/api/users/me/"))
        .bearer_auth(&alice_token)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 401, "an ended session's token stops working");
    page.wait_for(
        "her transitions on her page",
        "return document.getElementById('transitions').textContent.includes('offline')",
    )
    .await;

    // Search finds offline users too.
    page.type_into("#search", "ali").await;
    page.wait_for(
        "alice found by search",
        &format!("return !!{alice_row} && document.getElementById('list-title').textContent.includes('ali')"),
    )
    .await;

    // A page of another origin posts a logout with credentials: the admin stays signed in.
    let other_origin = base.replace("127.0.0.1", "localhost");
    page.open(&format!("{other_origin}/healthz")).await;
    let posted = run_async(
        &page,
        &format!(
            "try {{ await fetch('{base}/api/users/logout/', {{method: 'POST', credentials: 'include', mode: 'no-cors'}}); }} catch (e) {{}}
             return 'sent';"
        ),
    )
    .await;
    assert_eq!(posted, "sent");
    page.open(&format!("{base}/admin/")).await;
    page.wait_for(
        "the dashboard, still signed in",
        "return !document.getElementById('dashboard').classList.contains('hidden')",
    )
    .await;

    // Readable on a phone: nothing wider than the screen.
    page.resize(360, 740).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fits = page
        .eval("return document.documentElement.scrollWidth <= window.innerWidth")
        .await;
    assert_eq!(fits, true, "the dashboard scrolls sideways at 360 px");

    page.quit().await;
    server.stop().await;
}
