//! The last output of a read and what it was parsed into. A poll reads the same jls and
//! `pfctl -s Anchors` output five times a second on an idle host: the same output is not parsed
//! again, and the value it gave is shared, so that the poll can tell "nothing changed" by
//! identity ([`Arc::ptr_eq`]) instead of comparing a thousand jails.

use std::sync::{Arc, Mutex, PoisonError};

/// See the module documentation.
pub struct Memo<T> {
    last: Mutex<Option<(String, Arc<T>)>>,
}

impl<T> Default for Memo<T> {
    fn default() -> Self {
        Memo { last: Mutex::new(None) }
    }
}

impl<T> Memo<T> {
    /// What `parse` makes of `text`: the value given for the last text when `text` is the same
    /// (byte for byte), else `parse`'s, kept for next time. A failed parse forgets the last one.
    pub fn parse<E>(&self, text: String, parse: impl FnOnce(&str) -> Result<T, E>) -> Result<Arc<T>, E> {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((seen, value)) = last.as_ref()
            && *seen == text
        {
            return Ok(Arc::clone(value));
        }
        *last = None;
        let value = Arc::new(parse(&text)?);
        *last = Some((text, Arc::clone(&value)));
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_text_gives_the_same_value_without_parsing_again() {
        let memo = Memo::default();
        let parses = std::cell::Cell::new(0);
        let parse = |t: &str| -> Result<usize, String> {
            parses.set(parses.get() + 1);
            t.parse::<usize>().map_err(|e| e.to_string())
        };
        let a = memo.parse("1".into(), parse).unwrap();
        let b = memo.parse("1".into(), parse).unwrap();
        assert!(Arc::ptr_eq(&a, &b) && parses.get() == 1);
        let c = memo.parse("2".into(), parse).unwrap();
        assert_eq!((*c, parses.get()), (2, 2));
        assert!(memo.parse("x".into(), parse).is_err());
        let d = memo.parse("2".into(), parse).unwrap();
        assert!(!Arc::ptr_eq(&c, &d), "a failed parse forgot the last value");
        assert_eq!(parses.get(), 4);
    }
}
