//! The store contract: every observable behaviour of the `Store` trait, as one suite of async
//! cases, each run against every backend: SQLite in a temporary file and PostgreSQL in a fresh
//! database (see `backends.rs`; skipped with a notice when PostgreSQL is unreachable, unless
//! `LASTSEEN_REQUIRE_SERVICES=1`). `server.rs` runs the whole server on PostgreSQL once.
//!
//! A case is an `async fn(Arc<dyn Store>)` in one of the case modules; listing it in
//! `contract!` below creates `sqlite::<case>` and `postgres::<case>`.

mod backends;
mod migrations;
mod presence;
mod privacy;
mod server;
mod sessions;
mod users;

/// One `#[tokio::test]` per case and backend.
macro_rules! contract {
    ($($module:ident::$case:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    crate::backends::on_sqlite(crate::$module::$case).await;
                }
            )*
        }

        mod postgres {
            $(
                #[tokio::test]
                async fn $case() {
                    let test = concat!("postgres::", stringify!($case));
                    crate::backends::on_postgres(test, crate::$module::$case).await;
                }
            )*
        }
    };
}

contract! {
    users::migrating_again_changes_nothing_and_ping_answers,
    users::a_created_user_is_found_by_name_and_by_id,
    users::a_taken_username_is_a_conflict_in_any_case_and_found_in_any_case,
    users::an_external_user_is_created_once_and_found_by_its_external_id,
    users::an_external_user_whose_name_is_taken_is_a_conflict_and_nothing_is_created,
    users::concurrent_provisioning_of_one_external_id_creates_one_user,
    users::users_by_ids_returns_the_known_ones,
    users::search_finds_names_containing_the_text_in_any_case_in_id_order,
    users::online_samples_keep_one_count_per_minute_and_prune_old_ones,
    sessions::a_revoked_token_session_stays_revoked_until_its_token_expires,
    sessions::a_session_is_found_by_its_token_hash_until_it_is_deleted,
    sessions::a_token_hash_in_use_is_a_conflict_and_an_unknown_user_not_found,
    sessions::sessions_beyond_a_cap_are_the_least_recently_active_of_one_user,
    sessions::device_sessions_keep_their_platform_and_name_and_list_newest_first,
    presence::written_presence_is_read_back_with_microsecond_precision,
    presence::an_empty_batch_and_writes_of_unknown_users_change_nothing,
    presence::a_large_batch_is_written_completely,
    presence::concurrent_overlapping_batches_in_opposite_orders_all_succeed,
    presence::session_activity_only_moves_forward,
    presence::load_live_returns_users_with_a_session_active_since_the_cutoff,
    presence::a_session_past_its_stored_expiry_is_not_live_even_with_recent_activity,
    presence::a_dry_run_counts_inactive_online_users_and_changes_nothing,
    presence::inactive_online_users_go_offline_with_last_seen_kept_and_seq_bumped,
    presence::a_manual_status_is_stored_and_its_user_is_restored_without_sessions,
    presence::an_expired_status_resets_only_if_no_newer_one_was_set,
    privacy::users_who_never_changed_privacy_have_the_defaults_at_version_0,
    privacy::contact_and_block_changes_bump_the_version_and_return_the_whole_state,
    privacy::refused_changes_leave_state_and_version_untouched,
    privacy::settings_replace_the_except_list_and_invisible_mode_keeps_its_first_moment,
    privacy::a_partial_settings_update_keeps_the_fields_it_leaves_out,
    privacy::concurrent_changes_of_one_user_each_get_their_own_version,
}
