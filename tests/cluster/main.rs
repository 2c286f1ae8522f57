//! Scale-out: the engine contract on every backend, several `lastseen serve` nodes on one
//! PostgreSQL and one Redis, a Redis outage, and Redis Cluster.
//!
//! The engine contract (`contract.rs`) is one suite of cases; `contract!` below runs each on
//! the in-process backend (`local::`) and on the Redis backend with the machine's Redis
//! (`redis::`, a unique key prefix per case); `on_redis_cluster` runs all of them on a private
//! three-master Redis Cluster.

mod backends;
mod contract;
mod multi_node;
mod nodes;
mod outage;
mod redis_servers;

/// Fresh PostgreSQL databases, shared with the store contract suite.
#[allow(dead_code)]
#[path = "../store_contract/backends.rs"]
mod pg;

macro_rules! contract {
    ($($case:ident),* $(,)?) => {
        mod local {
            $(
                #[tokio::test]
                async fn $case() {
                    crate::backends::on_local(crate::contract::$case).await;
                }
            )*
        }

        mod redis {
            $(
                #[tokio::test]
                async fn $case() {
                    let test = concat!("redis::", stringify!($case));
                    let url = crate::backends::machine_redis();
                    crate::backends::on_redis(test, &url, crate::contract::$case).await;
                }
            )*
        }

        /// Every case at once on one private Redis Cluster (each with its own key prefix).
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn the_contract_holds_on_redis_cluster() {
            let test = "the_contract_holds_on_redis_cluster";
            let Some(cluster) = redis_servers::RedisCluster::start(test) else {
                return;
            };
            let url = cluster.url();
            let cases: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>> = vec![
                $(Box::pin(crate::backends::on_redis(test, &url, crate::contract::$case)),)*
            ];
            futures_util::future::join_all(cases).await;
        }
    };
}

contract! {
    first_activity_goes_online_with_one_event_and_more_activity_announces_nothing,
    a_session_ends_within_a_second_of_its_timeout_with_last_seen_at_the_last_activity,
    frequent_keepalives_keep_a_session_live_until_a_timeout_after_the_last,
    a_user_stays_online_while_any_session_is_live,
    an_open_socket_holds_its_session_and_its_close_starts_the_grace,
    a_reconnect_inside_the_grace_announces_nothing,
    ending_a_session_goes_offline_at_once_unless_another_is_live,
    seq_grows_per_user_across_transitions,
    online_pages_are_ordered_by_id_with_the_total,
    changed_state_is_handed_to_the_persister_and_given_back_on_failure,
    restored_users_are_online_for_their_remaining_time_without_events,
    availability_follows_real_activity_and_any_active_session_beats_idle,
    a_session_without_real_activity_turns_idle_after_idle_after,
    a_manual_status_applies_at_once_and_resets_itself_at_its_expiry,
    an_offline_user_keeps_last_seen_with_a_status_that_still_resets_on_time,
    a_restored_status_resets_at_its_expiry_without_a_session,
    live_sessions_are_the_sessions_that_count_toward_online,
}
