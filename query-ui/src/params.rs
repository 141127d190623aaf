//! Query-string pairs as the Prometheus and Loki APIs read them, where a
//! name may repeat (`match[]`).

pub(crate) trait Pairs {
    /// The first non-empty value of `name`.
    fn value(&self, name: &str) -> Option<&str>;
    /// Every value of `name`, in order.
    fn values(&self, name: &str) -> Vec<&str>;
}

impl Pairs for [(String, String)] {
    fn value(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(key, value)| key == name && !value.is_empty())
            .map(|(_, value)| value.as_str())
    }

    fn values(&self, name: &str) -> Vec<&str> {
        self.iter()
            .filter(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
            .collect()
    }
}
