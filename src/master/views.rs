//! What the master's endpoint renders, gathered from the pools.

use super::{Master, PoolKind};
use crate::scoreboard::now_us;
use mio::Token;
use std::time::Instant;

impl Master {
    /// A request or a connection on the master's endpoint.
    pub(super) fn on_endpoint_event(&mut self, token: Token) {
        let Master {
            endpoint,
            pools,
            prober,
            lot,
            figures,
            poll,
            config,
            ..
        } = self;
        let Some(endpoint) = endpoint else { return };
        let open = endpoint.open_connections() as u64;
        endpoint.on_event(poll.registry(), token, |render| {
            let now = now_us();
            // The master reads every slot of every pool here, in its loop: a slot whose
            // writer stalls mid-write may be waited for, but the whole scrape waits at
            // most one patience. Slots still unsettled past it are shown without their
            // request, as one stalled slot is anyway.
            let give_up_at = Some(Instant::now() + crate::scoreboard::READ_PATIENCE);
            let mut parked = vec![0u64; pools.len()];
            for (index, _, _) in lot.parked_fds() {
                if let Some(count) = parked.get_mut(index) {
                    *count += 1;
                }
            }
            let gathered: Vec<(usize, crate::scoreboard::PoolSnapshot, _)> = pools
                .iter()
                .enumerate()
                .filter(|(_, p)| p.kind == PoolKind::Workers)
                .map(|(index, p)| {
                    let queue = p.queue_figures(prober).unwrap_or_default();
                    let mut snapshot = p.scoreboard.snapshot_by(give_up_at);
                    for board in &p.previous {
                        snapshot
                            .previous
                            .extend(board.finishing_workers_by(give_up_at));
                    }
                    (index, snapshot, queue)
                })
                .collect();
            let views: Vec<crate::endpoint::exposition::PoolView<'_>> = gathered
                .iter()
                .map(|(index, snapshot, queue)| {
                    let pool = &pools[*index];
                    crate::endpoint::exposition::PoolView {
                        report: crate::status::Report {
                            pool: &pool.name,
                            settings: crate::status::PmSettings::from(
                                &config.pools[pool.config_index],
                            ),
                            snapshot,
                            queue: *queue,
                            now_us: now,
                        },
                        parked: parked[*index],
                        workers_started: pool.workers_started,
                        workers_died: pool.workers_died,
                    }
                })
                .collect();
            let master = crate::endpoint::exposition::MasterView {
                now_us: now,
                started_at_us: figures.started_at_us,
                reloads: figures.reloads,
                emergency_restarts: figures.emergency_restarts,
                endpoint_connections: open,
            };
            render(&views, &master)
        });
    }
}
