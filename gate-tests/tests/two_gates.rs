//! Two gates (two nginx with different `ROOST_GATE_ID`s on their own ports, one Redis)
//! holding requests for one sleeping function: the held count the orchestrator reads is
//! their sum, one gate at zero leaves the other's share alone, and a killed gate's share
//! stops counting by itself.

use futures::StreamExt;
use roost_common::wire::redis::{HeldShare, HELD_TTL_MS};
use roost_gate_tests::redis_util::{self, declare, held_in_redis, held_shares};
use roost_gate_tests::{bounded, client, FakeEnvoy, Gate};
use roost_testkit::process::free_port;
use roost_testkit::redis::Redis;
use roost_testkit::wait_until;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The held count in Redis until it is `want` (`None`: the key is gone).
async fn wait_total(conn: &redis::aio::MultiplexedConnection, want: Option<u64>) {
    wait_until(Duration::from_secs(10), &format!("{want:?} held in Redis"), || {
        let mut c = conn.clone();
        async move { (held_in_redis(&mut c, "sleepy").await == want).then_some(()) }
    })
    .await;
}

/// Each gate's count in its share of the held count.
async fn counts(conn: &mut redis::aio::MultiplexedConnection) -> BTreeMap<String, u64> {
    let shares = held_shares(conn, "sleepy").await;
    shares.into_iter().map(|(gate, v)| (gate, HeldShare::parse(&v).unwrap_or_else(|| panic!("a share {v:?}")).count)).collect()
}

/// `n` requests for the sleeping function held at `gate`, their connections kept open.
async fn hold(gate: &Gate, n: usize) -> Vec<tokio::net::TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(client::send_and_keep(gate.port, "/sleepy").await);
    }
    gate.wait_held("sleepy", n as u64).await;
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs nginx with Lua and redis-server: full tier (scripts/test.sh)"]
async fn two_gates_counts_add_up_and_a_killed_gates_share_expires() {
    bounded(Duration::from_secs(90), "two gates", async {
        let redis = Redis::start().await;
        let envoy = FakeEnvoy::start().await;
        // Shares renewed every 0.5 s: a killed gate's last one is at most that old.
        let env = |id| [("ROOST_GATE_ID", id), ("ROOST_GATE_REPUBLISH_MS", "500")];
        let a = Gate::start(free_port(), redis.port, &envoy.addr(), &env("gate-a")).await;
        let mut b = Gate::start(free_port(), redis.port, &envoy.addr(), &env("gate-b")).await;
        assert_eq!((a.healthz().await["gate"].as_str(), b.healthz().await["gate"].as_str()), (Some("gate-a"), Some("gate-b")));
        let mut conn = redis_util::connect(redis.port).await;
        declare(&mut conn, "sleepy").await;
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", redis.port)).unwrap();
        let mut pubsub = client.get_async_pubsub().await.unwrap();
        pubsub.subscribe("roost:scale").await.unwrap();
        let signals = Arc::new(Mutex::new(Vec::<serde_json::Value>::new()));
        let sig = signals.clone();
        let listener = tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(m) = messages.next().await {
                let text: String = m.get_payload().unwrap();
                sig.lock().unwrap().push(serde_json::from_str(&text).unwrap_or_else(|e| panic!("{text}: {e}")));
            }
        });

        // 3 held at A, 5 at B: the count is their sum, each gate in its own share.
        let at_a = hold(&a, 3).await;
        let _at_b = hold(&b, 5).await;
        wait_total(&conn, Some(8)).await;
        assert_eq!(counts(&mut conn).await, BTreeMap::from([("gate-a".into(), 3), ("gate-b".into(), 5)]));
        wait_until(Duration::from_secs(5), "B's signal with the sum", || async {
            signals.lock().unwrap().iter().any(|v| v["gate"] == "gate-b" && v["held"] == 8).then_some(())
        })
        .await;
        assert!(signals.lock().unwrap().iter().all(|v| v["function"] == "sleepy" && v["held"].as_u64() <= Some(8)));

        // A's clients hang up: A at zero removes its own share, B's stays.
        drop(at_a);
        a.wait_held("sleepy", 0).await;
        wait_total(&conn, Some(5)).await;
        assert_eq!(counts(&mut conn).await, BTreeMap::from([("gate-b".into(), 5)]));

        // A holds 2 again and B is killed: B's share counts until its expiry, then only A's.
        let at_a = hold(&a, 2).await;
        wait_total(&conn, Some(7)).await;
        b.kill();
        let killed = Instant::now();
        assert_eq!(held_in_redis(&mut conn, "sleepy").await, Some(7), "a dead gate's share counts until it expires");
        wait_total(&conn, Some(2)).await;
        let took = killed.elapsed();
        assert!(took <= Duration::from_millis(HELD_TTL_MS + 1_000), "B's share stopped counting {took:?} after the kill");
        // A's next renewal drops the dead share from the hash.
        wait_until(Duration::from_secs(5), "B's share dropped", || {
            let mut c = conn.clone();
            async move { (counts(&mut c).await == BTreeMap::from([("gate-a".into(), 2)])).then_some(()) }
        })
        .await;
        assert_eq!(a.held("sleepy").await, 2);

        // A's last clients go: nothing is held anywhere, and the key is gone.
        drop(at_a);
        wait_total(&conn, None).await;
        assert_eq!(envoy.hits(), 0, "the function never woke");
        listener.abort();
        a.assert_clean_log();
    })
    .await;
}
