//! Rate limits: publishes per user and logins plus upgrades per client IP (governor token
//! buckets, burst equal to the rate). Idle keys are evicted by [`Limits::evict_idle`].

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// The server's rate limiters; `None` means the limit is off.
pub struct Limits {
    publish: Option<DefaultKeyedRateLimiter<Arc<str>>>,
    connect: Option<DefaultKeyedRateLimiter<IpAddr>>,
}

fn quota(per_second: u32) -> Option<Quota> {
    NonZeroU32::new(per_second).map(|n| Quota::per_second(n).allow_burst(n))
}

impl Limits {
    /// Limits of `publish_rate` per user and `connect_rate` per IP, per second (0: off).
    pub fn new(publish_rate: u32, connect_rate: u32) -> Limits {
        Limits {
            publish: quota(publish_rate).map(RateLimiter::keyed),
            connect: quota(connect_rate).map(RateLimiter::keyed),
        }
    }

    /// Takes one publish token of `user`; false when the user is over its rate.
    pub fn allow_publish(&self, user: &Arc<str>) -> bool {
        self.publish
            .as_ref()
            .is_none_or(|l| l.check_key(user).is_ok())
    }

    /// Takes one connect token of `ip`; false when the IP is over its rate.
    pub fn allow_connect(&self, ip: IpAddr) -> bool {
        self.connect
            .as_ref()
            .is_none_or(|l| l.check_key(&ip).is_ok())
    }

    /// Forgets keys whose bucket is full again, so idle users and IPs cost nothing.
    pub fn evict_idle(&self) {
        if let Some(l) = &self.publish {
            l.retain_recent();
            l.shrink_to_fit();
        }
        if let Some(l) = &self.connect {
            l.retain_recent();
            l.shrink_to_fit();
        }
    }

    /// Keys currently tracked (users plus IPs).
    pub fn tracked_keys(&self) -> usize {
        self.publish.as_ref().map_or(0, |l| l.len()) + self.connect.as_ref().map_or(0, |l| l.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_limit_is_per_user_with_a_burst() {
        let limits = Limits::new(3, 0);
        let a: Arc<str> = "a".into();
        let b: Arc<str> = "b".into();
        assert!((0..3).all(|_| limits.allow_publish(&a)));
        assert!(!limits.allow_publish(&a));
        assert!(limits.allow_publish(&b));
        assert!((0..100).all(|_| limits.allow_connect("127.0.0.1".parse().unwrap())));
    }

    #[test]
    fn connect_limit_is_per_ip_and_idle_keys_are_evicted() {
        let limits = Limits::new(0, 2);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        assert!(limits.allow_connect(ip));
        assert!(limits.allow_connect(ip));
        assert!(!limits.allow_connect(ip));
        assert!(limits.allow_connect("10.0.0.2".parse().unwrap()));
        assert_eq!(limits.tracked_keys(), 2);
        std::thread::sleep(std::time::Duration::from_millis(2100));
        limits.evict_idle();
        assert_eq!(limits.tracked_keys(), 0);
    }
}
