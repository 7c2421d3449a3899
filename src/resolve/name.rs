//! Document names: `matchmaking/queues.yaml` is the module `matchmaking/queues`;
//! `matchmaking/queues@region=eu,mode=ranked.yaml` is an overlay of it, applied when the
//! instance has every one of those labels.

use std::{collections::BTreeMap, fmt};

use crate::model::{Key, KeyError};

/// Label name → value, as given by `--label` or a request's context.
pub type Labels = BTreeMap<String, String>;

/// Which module a document belongs to, and for an overlay, its labels.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ModuleName {
    pub key: Key,
    /// Empty for the module's own document.
    pub overlay: Labels,
}

impl ModuleName {
    pub fn base(key: Key) -> ModuleName {
        ModuleName { key, overlay: Labels::new() }
    }

    pub fn is_overlay(&self) -> bool {
        !self.overlay.is_empty()
    }

    /// Whether this overlay applies to an instance with `labels`.
    pub fn applies_to(&self, labels: &Labels) -> bool {
        overlay_applies(&self.overlay, labels)
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.key.as_str())?;
        for (n, (name, value)) in self.overlay.iter().enumerate() {
            write!(f, "{}{name}={value}", if n == 0 { '@' } else { ',' })?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{0}")]
    Key(#[from] KeyError),
    #[error("overlay label {0:?} is not NAME=VALUE with A-Z a-z 0-9 _ . - only")]
    Label(String),
    #[error("overlay label {0} is given twice")]
    DuplicateLabel(String),
}

/// Parses a document name without its suffix, such as `loot/chest@region=eu`.
pub fn parse_module_name(stem: &str) -> Result<ModuleName, NameError> {
    let (key, labels) = match stem.split_once('@') {
        Some((key, labels)) => (key, Some(labels)),
        None => (stem, None),
    };
    let key = Key::new(key)?;
    let mut overlay = Labels::new();
    for label in labels.into_iter().flat_map(|labels| labels.split(',')) {
        let (name, value) = label.split_once('=').ok_or_else(|| NameError::Label(label.to_owned()))?;
        if !is_label_word(name) || !is_label_word(value) {
            return Err(NameError::Label(label.to_owned()));
        }
        if overlay.insert(name.to_owned(), value.to_owned()).is_some() {
            return Err(NameError::DuplicateLabel(name.to_owned()));
        }
    }
    if labels.is_some() && overlay.is_empty() {
        return Err(NameError::Label(String::new()));
    }
    Ok(ModuleName { key, overlay })
}

/// Whether an overlay's labels are all among `labels`.
pub fn overlay_applies(overlay: &Labels, labels: &Labels) -> bool {
    overlay.iter().all(|(name, value)| labels.get(name) == Some(value))
}

/// Label names and values: non-empty, `A-Z a-z 0-9 _ . -`.
pub fn is_label_word(word: &str) -> bool {
    !word.is_empty() && word.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}
