//! The core's [`Settings`] from a loaded [`Config`]: the one place the gateway's configuration
//! meets the engine's.

use mqttsn_core::codec::DecodeOptions;
use mqttsn_core::engine::admission::BudgetLimits;
use mqttsn_core::engine::sleep::{Overflow, SleepLimits};
use mqttsn_core::hash::HashSeed;
use mqttsn_core::{Limits, Settings};

use super::{Config, DropPolicy};

impl Config {
    /// What the engine needs from this configuration, with its hash maps keyed by `hash_seed`
    /// (random in the driver, fixed in tests).
    pub fn engine_settings(&self, hash_seed: HashSeed) -> Settings {
        Settings {
            gw_id: self.gateway.id,
            mode: self.gateway.mode,
            max_clients: self.gateway.max_clients,
            client_id_max_len: usize::from(self.gateway.client_id_max_len),
            max_topics_per_client: usize::from(self.gateway.max_topics_per_client),
            decode: DecodeOptions {
                qos_minus1_long_topic: self.gateway.qos_minus1_long_topic,
            },
            advertise: self.gateway.advertise,
            keep_alive_tolerance: self.timers.keep_alive_tolerance,
            t_retry: self.timers.t_retry,
            n_retry: self.timers.n_retry,
            t_adv: self.timers.t_adv,
            gwinfo_interval: self.timers.gwinfo_interval,
            sleep: SleepLimits {
                max_messages: self.sleep.max_messages,
                max_bytes: self.sleep.max_bytes,
                overflow: match self.sleep.drop_policy {
                    DropPolicy::DropOldest => Overflow::DropOldest,
                    DropPolicy::DropNewest => Overflow::DropNewest,
                },
            },
            sleep_max_total: self.sleep.max_total_bytes,
            client_id_prefix: self.upstream.client_id_prefix.clone(),
            username: self.upstream.username.clone(),
            password: self.upstream.password.clone(),
            upstream_keep_alive: self.upstream.keep_alive,
            predefined: self.predefined.clone(),
            max_idle: self.sessions.max_idle,
            session_expiry: self.sessions.expiry,
            limits: Limits {
                frames: BudgetLimits {
                    rate: self.limits.frame_rate,
                    burst: self.limits.frame_burst,
                },
                budget: BudgetLimits {
                    rate: self.limits.publish_rate,
                    burst: self.limits.publish_burst,
                },
                max_filters_per_client: self.limits.max_filters_per_client,
                max_will_bytes: self.limits.max_will_bytes,
                verify_return_path: self.limits.verify_return_path,
                return_path_factor: self.limits.return_path_factor,
            },
            upstream_queue_bytes: self.upstream.max_queued_bytes,
            durable: self.storage.dir.is_some(),
            hash_seed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_limits_and_policy_carry_over() {
        let mut config = Config::default();
        config.sleep.max_messages = 3;
        config.sleep.max_bytes = 7;
        config.sleep.max_total_bytes = 70;
        config.sleep.drop_policy = DropPolicy::DropNewest;
        let settings = config.engine_settings(HashSeed(1, 2));
        assert_eq!(
            settings.sleep,
            SleepLimits {
                max_messages: 3,
                max_bytes: 7,
                overflow: Overflow::DropNewest
            }
        );
        assert_eq!(settings.sleep_max_total, 70);
        assert_eq!(settings.hash_seed, HashSeed(1, 2));
        assert_eq!(settings.mode, config.gateway.mode);
    }
}
