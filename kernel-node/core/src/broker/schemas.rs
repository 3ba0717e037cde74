//! JSON Schemas for events, by topic pattern, declared by providers at
//! Register and held while the declaring instance is registered.
//!
//! A publish on a topic that matches one or more patterns must carry JSON
//! valid against every matching schema. Patterns are kept in the same trie
//! as subscriptions, so the check costs one trie walk, and nothing at all
//! while no instance declared a topic schema.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use super::trie::Trie;
use crate::error::Error;
use crate::schema::schema_errors;

/// A compiled schema and the pattern it was declared for.
type Entry = (String, Arc<jsonschema::Validator>);

/// The topic schemas of every registered instance.
#[derive(Debug, Default)]
pub struct TopicSchemas {
    any: AtomicBool,
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    trie: Trie<u64>,
    entries: FxHashMap<u64, Entry>,
    /// Entry ids by declaring instance.
    owners: FxHashMap<Arc<str>, Vec<u64>>,
    next: u64,
}

impl TopicSchemas {
    /// Adds the schemas `owner` declared (already compiled).
    pub fn add(&self, owner: &Arc<str>, schemas: &[Entry]) {
        if schemas.is_empty() {
            return;
        }
        let mut inner = self.inner.write();
        for entry in schemas {
            inner.next += 1;
            let id = inner.next;
            inner.trie.insert(&entry.0, id);
            inner.entries.insert(id, entry.clone());
            inner.owners.entry(owner.clone()).or_default().push(id);
        }
        self.any.store(true, Ordering::Release);
    }

    /// Removes what `owner` declared (its session ended or it was dropped).
    pub fn remove(&self, owner: &str) {
        let mut inner = self.inner.write();
        let Some(ids) = inner.owners.remove(owner) else {
            return;
        };
        for id in ids {
            if let Some((pattern, _)) = inner.entries.remove(&id) {
                inner.trie.remove(&pattern, id);
            }
        }
        self.any.store(!inner.entries.is_empty(), Ordering::Release);
    }

    /// Checks an event against every schema whose pattern matches `topic`.
    pub fn check(&self, topic: &str, payload: &[u8], content_type: &str) -> Result<(), Error> {
        if !self.any.load(Ordering::Acquire) {
            return Ok(());
        }
        let matching: Vec<Entry> = {
            let inner = self.inner.read();
            inner
                .trie
                .matches(topic)
                .iter()
                .filter_map(|id| inner.entries.get(id).cloned())
                .collect()
        };
        if matching.is_empty() {
            return Ok(());
        }
        let invalid = |detail: String| Error::InvalidEvent {
            topic: topic.to_owned(),
            detail,
        };
        if !(content_type.is_empty() || content_type.to_ascii_lowercase().contains("json")) {
            return Err(invalid(format!(
                "events on this topic take JSON, got content type `{content_type}`"
            )));
        }
        let value: serde_json::Value = serde_json::from_slice(payload)
            .map_err(|e| invalid(format!("payload is not valid JSON: {e}")))?;
        let failures: Vec<String> = matching
            .iter()
            .flat_map(|(pattern, schema)| {
                schema_errors(schema, &value, payload.len())
                    .into_iter()
                    .map(move |e| format!("{e} (schema for `{pattern}`)"))
            })
            .collect();
        if failures.is_empty() {
            Ok(())
        } else {
            Err(invalid(format!(
                "event does not match the schema: {}",
                failures.join("; ")
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::compile_topics;

    #[test]
    fn matching_schemas_apply_while_their_owner_is_registered() {
        let s = TopicSchemas::default();
        let mut declared = std::collections::HashMap::new();
        declared.insert(
            "order.*".to_owned(),
            r#"{"type":"object","required":["id"],"properties":{"id":{"type":"integer"}}}"#
                .to_owned(),
        );
        let owner: Arc<str> = "orders-1".into();
        s.add(&owner, &compile_topics(&declared).expect("compiles"));
        assert!(s.check("order.created", br#"{"id":7}"#, "").is_ok());
        let err = s
            .check("order.created", br#"{"id":"7"}"#, "")
            .expect_err("wrong type");
        assert!(err.to_string().contains("/id"), "{err}");
        assert!(s.check("order.created", b"not json", "").is_err());
        assert!(
            s.check("audit.created", b"not json", "").is_ok(),
            "no schema"
        );
        s.remove("orders-1");
        assert!(s.check("order.created", b"not json", "").is_ok());
    }
}
