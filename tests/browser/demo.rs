//! The demo page: two users, each in their own browser (separate profiles, so separate cookies
//! and storage), add each other as contacts and see dots, status, "last seen", "typing…" and
//! privacy changes live.

use crate::harness::{Driver, TestServer, browser_available, register};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_users_see_each_others_dot_turn_green_then_red_on_dnd_and_then_last_seen() {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let base = server.base.clone();

    let client = reqwest::Client::new();
    register(&client, &base, "alice").await;
    let bob = register(&client, &base, "bob").await;

    let driver = Driver::start().await;
    let alice_page = driver.browser(&server.profile("alice")).await;
    let bob_page = driver.browser(&server.profile("bob")).await;

    alice_page.log_in(&base, "alice").await;
    alice_page.type_into("#contact-name", "bob").await;
    alice_page.click("#add-contact").await;
    let dot = format!("document.querySelector('li[data-user-id=\"{bob}\"] .dot')");
    let status = format!("document.querySelector('li[data-user-id=\"{bob}\"] .status')");
    alice_page
        .wait_for(
            "bob's row, offline",
            &format!("return !!{dot} && !{dot}.classList.contains('active')"),
        )
        .await;

    bob_page.log_in(&base, "bob").await;
    alice_page
        .wait_for(
            "bob's dot to turn green",
            &format!("return {dot}.classList.contains('active')"),
        )
        .await;
    assert_eq!(
        alice_page
            .eval(&format!("return {status}.textContent"))
            .await,
        "online"
    );

    // Bob sets "do not disturb" with a custom status in his page: Alice's dot of him turns red
    // and shows the status; clearing it turns the dot green again.
    bob_page.click("#open-settings").await;
    bob_page
        .eval("document.getElementById('status-mode').value = 'dnd'; return true")
        .await;
    bob_page.type_into("#status-emoji", "📅").await;
    bob_page.type_into("#status-text", "In a meeting").await;
    bob_page.click("#set-status").await;
    let custom = format!("document.querySelector('li[data-user-id=\"{bob}\"] .custom')");
    alice_page
        .wait_for(
            "bob's dot to turn red with his status",
            &format!("return {dot}.classList.contains('dnd') && {custom}.textContent === '📅 In a meeting'"),
        )
        .await;
    assert_eq!(
        alice_page
            .eval(&format!("return {status}.textContent"))
            .await,
        "online · do not disturb"
    );
    bob_page
        .wait_for(
            "bob's own dot to turn red",
            "return document.getElementById('my-dot').classList.contains('dnd')",
        )
        .await;
    bob_page.click("#clear-status").await;
    alice_page
        .wait_for(
            "bob's dot to turn green again",
            &format!("return {dot}.classList.contains('active') && {custom}.textContent === ''"),
        )
        .await;

    bob_page.click("#logout").await;
    alice_page
        .wait_for(
            "\"last seen just now\" after bob logs out",
            &format!("return {dot}.classList.contains('offline') && {status}.textContent === 'last seen just now'"),
        )
        .await;

    alice_page.quit().await;
    bob_page.quit().await;
    server.stop().await;
}

/// `document.querySelector(...)` of a part of `user`'s row in the contact list.
fn row_part(user: i64, part: &str) -> String {
    format!("document.querySelector('li[data-user-id=\"{user}\"] {part}')")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contact_added_by_username_turns_online_live_then_hidden_by_their_privacy_and_survives_a_reload_at_phone_width()
 {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let alice = register(&client, &base, "alice").await;
    let bob = register(&client, &base, "bob").await;

    let favicon = client
        .get(format!("{base}/favicon.svg"))
        .send()
        .await
        .unwrap();
    assert_eq!(favicon.status(), 200);
    assert_eq!(favicon.headers()["content-type"], "image/svg+xml");
    assert!(favicon.text().await.unwrap().starts_with("<svg"));

    let driver = Driver::start().await;
    let alice_page = driver.browser(&server.profile("alice")).await;
    let bob_page = driver.browser(&server.profile("bob")).await;
    alice_page.log_in(&base, "alice").await;
    assert_eq!(
        alice_page
            .eval("return document.querySelector('link[rel=icon]').getAttribute('href')")
            .await,
        "/favicon.svg"
    );
    alice_page
        .wait_for(
            "the connection indicator to say connected",
            "const c = document.getElementById('connection'); \
             return c.dataset.state === 'open' && c.textContent === 'Connected'",
        )
        .await;

    // Adding oneself is refused with a clear message, and adds no row.
    alice_page.type_into("#contact-name", "alice").await;
    alice_page.click("#add-contact").await;
    alice_page
        .wait_for(
            "the message that one cannot add oneself",
            "return document.getElementById('error').textContent === \"You can't add yourself as a contact.\"",
        )
        .await;
    assert_eq!(
        alice_page
            .eval(&format!("return !{}", row_part(alice, ".dot")))
            .await,
        true
    );
    alice_page
        .eval("document.getElementById('contact-name').value = ''; return true")
        .await;

    // Alice adds Bob by username: his row shows him offline (never seen) until he signs in,
    // then his dot turns green without a reload.
    let dot = row_part(bob, ".dot");
    let status = row_part(bob, ".status");
    alice_page.type_into("#contact-name", "bob").await;
    alice_page.click("#add-contact").await;
    alice_page
        .wait_for(
            "bob's row, offline",
            &format!("return !!{dot} && {dot}.classList.contains('offline') && {status}.textContent === 'offline'"),
        )
        .await;
    bob_page.log_in(&base, "bob").await;
    alice_page
        .wait_for(
            "bob's dot to turn green",
            &format!(
                "return {dot}.classList.contains('active') && {status}.textContent === 'online'"
            ),
        )
        .await;

    // The filter narrows the list by name.
    alice_page.type_into("#contact-filter", "zz").await;
    alice_page
        .wait_for(
            "bob's row filtered out",
            &format!("return document.querySelector('li[data-user-id=\"{bob}\"]').classList.contains('hidden') \
                      && !document.getElementById('no-match').classList.contains('hidden')"),
        )
        .await;
    alice_page
        .eval("const f = document.getElementById('contact-filter'); f.value = ''; f.dispatchEvent(new Event('input')); return true")
        .await;

    // Selecting Bob highlights the chat with a labelled composer; Alice typing shows
    // "typing…" in Bob's page (Bob has Alice as a contact, so he watches her).
    alice_page
        .click(&format!("li[data-user-id=\"{bob}\"] .contact"))
        .await;
    assert_eq!(
        alice_page
            .eval("return document.getElementById('chat').classList.contains('highlight') \
                   && document.querySelector('label[for=message]').textContent.startsWith('\"typing…\" is sent to bob while you type; messages are not stored')")
            .await,
        true
    );
    bob_page.type_into("#contact-name", "alice").await;
    bob_page.click("#add-contact").await;
    bob_page
        .wait_for(
            "alice's row in bob's list, online",
            &format!(
                "return !!{0} && {0}.classList.contains('active')",
                row_part(alice, ".dot")
            ),
        )
        .await;
    alice_page.type_into("#message", "hi").await;
    bob_page
        .wait_for(
            "\"typing…\" from alice",
            &format!(
                "return {}.textContent === 'typing…'",
                row_part(alice, ".status")
            ),
        )
        .await;

    // Bob hides his online status and last seen from everyone: Alice's page shows him with no
    // dot state and no "last seen", live.
    bob_page.click("#open-settings").await;
    bob_page.set_value("#privacy-last-seen", "nobody").await;
    bob_page
        .set_value("#privacy-online", "same_as_last_seen")
        .await;
    bob_page.click("#save-privacy").await;
    let hidden = format!(
        "return !!{dot} && {dot}.classList.contains('unknown') && !['active', 'idle', 'dnd', 'offline'].some((c) => {dot}.classList.contains(c)) \
         && {status}.textContent === '' && document.getElementById('chat-status').textContent === 'presence hidden'"
    );
    alice_page.wait_for("bob hidden", &hidden).await;

    // A reload keeps Alice signed in, from the HttpOnly cookie alone: nothing in page storage,
    // the cookie invisible to scripts, her contacts come back from the server.
    alice_page.open(&format!("{base}/")).await;
    alice_page
        .wait_for(
            "the main view after a reload",
            "return !document.getElementById('main-view').classList.contains('hidden') \
             && document.getElementById('my-dot').classList.contains('active')",
        )
        .await;
    alice_page
        .wait_for(
            "bob's row, still hidden, after the reload",
            &hidden.replace(
                " && document.getElementById('chat-status').textContent === 'presence hidden'",
                "",
            ),
        )
        .await;
    assert_eq!(
        alice_page
            .eval("return [localStorage.length, sessionStorage.length, document.cookie.includes('lastseen_session')]")
            .await,
        serde_json::json!([0, 0, false])
    );
    // Bob still sees her online (her online status is visible to everyone).
    bob_page
        .wait_for(
            "alice online in bob's list after her reload",
            &format!(
                "return {}.classList.contains('active')",
                row_part(alice, ".dot")
            ),
        )
        .await;

    // At phone width (360 px) nothing scrolls sideways and content keeps off the edges, with
    // the settings open and a chat selected.
    alice_page.resize(360, 800).await;
    alice_page.click("#open-settings").await;
    alice_page
        .click(&format!("li[data-user-id=\"{bob}\"] .contact"))
        .await;
    let layout = alice_page
        .eval(
            "const root = document.documentElement; \
             const cards = [...document.querySelectorAll('#main-view .card')].map((c) => c.getBoundingClientRect()); \
             return {inner: window.innerWidth, scroll: root.scrollWidth, client: root.clientWidth, \
                     left: Math.min(...cards.map((r) => r.left)), right: Math.max(...cards.map((r) => r.right))}",
        )
        .await;
    let number = |key: &str| layout[key].as_f64().unwrap();
    assert!(number("inner") <= 360.0, "window not resized: {layout}");
    assert!(
        number("scroll") <= number("client"),
        "horizontal scroll: {layout}"
    );
    assert!(
        number("left") >= 8.0,
        "content touches the left edge: {layout}"
    );
    assert!(
        number("right") <= number("client") - 8.0,
        "content touches the right edge: {layout}"
    );

    // The server goes away: the indicator says so in words, first reconnecting with backoff,
    // then (after three failed attempts) the offline fallback.
    server.stop().await;
    alice_page
        .wait_for(
            "the indicator to say reconnecting",
            "const c = document.getElementById('connection'); \
             return c.dataset.state === 'reconnecting' && c.textContent.startsWith('Reconnecting')",
        )
        .await;
    alice_page
        .wait_for(
            "the indicator to say offline fallback",
            "const c = document.getElementById('connection'); \
             return c.dataset.state === 'fallback' && c.textContent === 'Offline fallback: live updates over SSE'",
        )
        .await;

    alice_page.quit().await;
    bob_page.quit().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invisible_mode_blocking_and_removing_a_contact_from_the_page_change_what_the_other_user_sees()
 {
    if !browser_available() {
        return;
    }
    let server = TestServer::start(|_| {}).await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let alice = register(&client, &base, "alice").await;
    let bob = register(&client, &base, "bob").await;

    let driver = Driver::start().await;
    let alice_page = driver.browser(&server.profile("alice")).await;
    let bob_page = driver.browser(&server.profile("bob")).await;
    alice_page.log_in(&base, "alice").await;
    bob_page.log_in(&base, "bob").await;
    alice_page.type_into("#contact-name", "bob").await;
    alice_page.click("#add-contact").await;
    let dot = row_part(bob, ".dot");
    let status = row_part(bob, ".status");
    let online = format!(
        "return !!{dot} && {dot}.classList.contains('active') && {status}.textContent === 'online'"
    );
    alice_page.wait_for("bob online", &online).await;

    // Invisible mode: Bob appears offline, last seen when he turned it on; his own page says
    // he is invisible. Turning it off shows him online again.
    bob_page.click("#open-settings").await;
    bob_page.click("#privacy-invisible").await;
    bob_page.click("#save-privacy").await;
    alice_page
        .wait_for(
            "bob offline while invisible",
            &format!("return {dot}.classList.contains('offline') && {status}.textContent === 'last seen just now'"),
        )
        .await;
    bob_page
        .wait_for(
            "bob's invisible badge",
            "return !document.getElementById('invisible-badge').classList.contains('hidden')",
        )
        .await;
    bob_page.click("#privacy-invisible").await;
    bob_page.click("#save-privacy").await;
    alice_page
        .wait_for("bob online again after invisible mode", &online)
        .await;

    // Bob cannot block himself; blocking Alice hides him from her, unblocking shows him again.
    bob_page.type_into("#block-name", "bob").await;
    bob_page.click("#block").await;
    bob_page
        .wait_for(
            "the message that one cannot block oneself",
            "return document.getElementById('error').textContent === \"You can't block yourself.\"",
        )
        .await;
    bob_page
        .eval("document.getElementById('block-name').value = ''; return true")
        .await;
    bob_page.type_into("#block-name", "alice").await;
    bob_page.click("#block").await;
    bob_page
        .wait_for(
            "alice in bob's blocked list",
            &format!("return document.querySelector('#blocked li[data-user-id=\"{alice}\"]')?.textContent.startsWith('alice') === true"),
        )
        .await;
    alice_page
        .wait_for(
            "bob hidden from alice once she is blocked",
            &format!("return {dot}.classList.contains('unknown') && {status}.textContent === ''"),
        )
        .await;
    bob_page
        .click(&format!("#blocked li[data-user-id=\"{alice}\"] .unblock"))
        .await;
    alice_page
        .wait_for("bob online again after the unblock", &online)
        .await;
    bob_page
        .wait_for(
            "bob's blocked list empty",
            "return !document.getElementById('blocked-empty').classList.contains('hidden')",
        )
        .await;

    // Alice removes Bob: his row goes, on the server too (it stays gone after a reload).
    alice_page
        .click(&format!("li[data-user-id=\"{bob}\"] .remove"))
        .await;
    let gone = format!(
        "return !{dot} && !document.getElementById('contacts-empty').classList.contains('hidden')"
    );
    alice_page.wait_for("bob's row removed", &gone).await;
    alice_page.open(&format!("{base}/")).await;
    alice_page
        .wait_for(
            "the page loaded after a reload (the device list follows the contacts)",
            "return document.querySelectorAll('#sessions li').length > 0",
        )
        .await;
    alice_page
        .wait_for("bob's row still removed after a reload", &gone)
        .await;

    alice_page.quit().await;
    bob_page.quit().await;
    server.stop().await;
}
