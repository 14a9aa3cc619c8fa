//! Standard Webhooks 1.0: the per-subscription signing secret, the signature every delivery
//! carries, and the retry schedule. Pure.

use std::fmt;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A signing secret: `whsec_` followed by the base64 of 24 to 64 random bytes. Debug output
/// never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret {
    key: Vec<u8>,
}

impl WebhookSecret {
    pub const PREFIX: &'static str = "whsec_";
    pub const MIN_BYTES: usize = 24;
    pub const MAX_BYTES: usize = 64;

    pub fn parse(raw: &str) -> Result<WebhookSecret, String> {
        let encoded = raw
            .strip_prefix(Self::PREFIX)
            .ok_or_else(|| format!("the webhook secret must start with '{}' followed by base64", Self::PREFIX))?;
        let key = STANDARD.decode(encoded).map_err(|_| "the webhook secret is not valid base64".to_owned())?;
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&key.len()) {
            return Err(format!(
                "the webhook secret must hold {} to {} random bytes (it holds {})",
                Self::MIN_BYTES,
                Self::MAX_BYTES,
                key.len()
            ));
        }
        Ok(WebhookSecret { key })
    }

    /// The stored form (`whsec_…`).
    pub fn encoded(&self) -> String {
        format!("{}{}", Self::PREFIX, STANDARD.encode(&self.key))
    }

    /// `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of `id.timestamp.body`.
    pub fn sign(&self, message_id: &str, timestamp_secs: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length; the error type exists for other MACs.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.key) else {
            unreachable!("HMAC-SHA256 takes keys of any length")
        };
        mac.update(message_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp_secs.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(…)")
    }
}

/// How long to wait before each retry of a failed delivery: the n-th entry follows the n-th
/// failure; after the last, the event is dead. Spread over days by default, because short
/// windows lose notifications whenever a GP system is down overnight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule(Vec<Duration>);

impl RetrySchedule {
    pub const DEFAULT: &'static str = "10s,1m,5m,15m,30m,1h,2h,4h,8h,12h,24h,24h,24h";

    /// Parses `10s,1m,2h,1d`-style comma-separated durations (ms, s, m, h, d).
    pub fn parse(raw: &str) -> Result<RetrySchedule, String> {
        let delays = raw
            .split(',')
            .map(str::trim)
            .filter(|part| !part.is_empty())
            .map(parse_duration)
            .collect::<Result<Vec<_>, _>>()?;
        if delays.is_empty() {
            return Err("the retry schedule needs at least one delay".to_owned());
        }
        Ok(RetrySchedule(delays))
    }

    /// Attempts in all: the first delivery plus one per delay.
    pub fn max_attempts(&self) -> u32 {
        u32::try_from(self.0.len()).unwrap_or(u32::MAX).saturating_add(1)
    }

    /// The delay after `attempts` failed attempts (1-based), with ±20 % jitter drawn from
    /// `jitter` in [0, 1) so that many events failing together do not retry together.
    /// `None`: that was the last attempt.
    pub fn delay_after(&self, attempts: u32, jitter: f64) -> Option<Duration> {
        let index = usize::try_from(attempts).ok()?.checked_sub(1)?;
        let base = *self.0.get(index)?;
        Some(base.mul_f64(0.8 + 0.4 * jitter.clamp(0.0, 1.0)))
    }

    /// The whole span of retries, for documentation and logs.
    pub fn total(&self) -> Duration {
        self.0.iter().sum()
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        match RetrySchedule::parse(Self::DEFAULT) {
            Ok(schedule) => schedule,
            Err(e) => unreachable!("the default retry schedule parses: {e}"),
        }
    }
}

fn parse_duration(raw: &str) -> Result<Duration, String> {
    let split = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("'{raw}' is not a duration like 30s, 5m, 2h or 1d"))?;
    let millis = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("'{raw}' is not a duration like 30s, 5m, 2h or 1d")),
    };
    Ok(Duration::from_millis(value.saturating_mul(millis)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> WebhookSecret {
        WebhookSecret::parse(&format!("whsec_{}", STANDARD.encode([7u8; 32]))).expect("secret")
    }

    #[test]
    fn the_signature_follows_standard_webhooks() {
        // The Standard Webhooks reference test vector.
        let secret = WebhookSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("secret");
        let signature = secret.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, br#"{"test": 2432232314}"#);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn secrets_that_are_too_short_too_long_or_not_base64_are_refused() {
        for raw in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned(),
            format!("whsec_{}", STANDARD.encode([1u8; 16])),
            format!("whsec_{}", STANDARD.encode([1u8; 65])),
            "whsec_not base64!".to_owned(),
        ] {
            assert!(WebhookSecret::parse(&raw).is_err(), "{raw} should be refused");
        }
        assert_eq!(WebhookSecret::parse(&secret().encoded()), Ok(secret()));
    }

    #[test]
    fn debug_output_does_not_show_the_secret() {
        assert_eq!(format!("{:?}", secret()), "WebhookSecret(…)");
    }

    #[test]
    fn the_retry_schedule_backs_off_with_jitter_and_ends() {
        let schedule = RetrySchedule::parse("10s, 1m,2h,1d").expect("schedule");
        assert_eq!(schedule.max_attempts(), 5);
        assert_eq!(schedule.delay_after(1, 0.5), Some(Duration::from_secs(10)));
        assert_eq!(schedule.delay_after(2, 0.0), Some(Duration::from_secs(48)));
        assert_eq!(schedule.delay_after(4, 1.0), Some(Duration::from_secs(86_400).mul_f64(1.2)));
        assert_eq!(schedule.delay_after(5, 0.5), None);
        assert!(RetrySchedule::default().total() > Duration::from_secs(3 * 86_400), "retries span days");
        for raw in ["", "10", "5x", "s"] {
            assert!(RetrySchedule::parse(raw).is_err(), "{raw:?} should be refused");
        }
    }
}
