//! The demo page: two users, each in their own browser, watch each other's dot, status and
//! "last seen".

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
    alice_page.type_into("#watch-name", "bob").await;
    alice_page.click("#watch").await;
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
            "\"last seen today at …\" after bob logs out",
            &format!("return !{dot}.classList.contains('active') && {status}.textContent.startsWith('last seen today at')"),
        )
        .await;

    alice_page.quit().await;
    bob_page.quit().await;
    server.stop().await;
}
