//! Presence held on other nodes (cluster mode), per room: which users, through which nodes.
//! A shard owns the part for its rooms; the broker feeds it from Redis.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::auth::User;

/// Users present in a room through other nodes.
#[derive(Default)]
pub struct RemoteUsers {
    users: HashMap<Arc<str>, (User, HashSet<Arc<str>>)>,
}

impl RemoteUsers {
    pub fn contains(&self, user_id: &str) -> bool {
        self.users.contains_key(user_id)
    }

    pub fn users(&self) -> impl Iterator<Item = &User> {
        self.users.values().map(|(u, _)| u)
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Records `user` on `node`; true when the user was not present through any other node.
    pub fn add(&mut self, node: &Arc<str>, user: &User) -> bool {
        let entry = self
            .users
            .entry(user.id.clone())
            .or_insert_with(|| (user.clone(), HashSet::new()));
        let first = entry.1.is_empty();
        entry.1.insert(node.clone());
        first
    }

    /// Removes `user` from `node`; true when the user is no longer present through any node.
    pub fn remove(&mut self, node: &str, user_id: &str) -> bool {
        let Some(entry) = self.users.get_mut(user_id) else {
            return false;
        };
        entry.1.remove(node);
        if entry.1.is_empty() {
            self.users.remove(user_id);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_is_present_while_any_node_has_it() {
        let mut r = RemoteUsers::default();
        let u = User {
            id: "u".into(),
            name: "U".into(),
        };
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        assert!(r.add(&a, &u));
        assert!(!r.add(&b, &u));
        assert!(!r.remove("a", "u"));
        assert!(r.contains("u"));
        assert!(r.remove("b", "u"));
        assert!(r.is_empty());
    }
}
