//! A plain [`ServerSet`] for the unit tests.

use crate::ServerSet;

#[derive(Clone, Debug, Default)]
pub(crate) struct TestSet {
    pub weights: Vec<u32>,
    pub in_flight: Vec<u32>,
    pub latency: Vec<f64>,
    pub ids: Vec<String>,
    /// `table_weight` overrides; None: the default (`weight`).
    pub table: Option<Vec<u32>>,
}

impl TestSet {
    pub fn with_weights(weights: &[u32]) -> Self {
        let n = weights.len();
        TestSet {
            weights: weights.to_vec(),
            in_flight: vec![0; n],
            latency: vec![1_000_000.0; n],
            ids: (0..n).map(|i| format!("10.0.0.{i}:80")).collect(),
            table: None,
        }
    }
}

impl ServerSet for TestSet {
    fn len(&self) -> usize {
        self.weights.len()
    }
    fn weight(&self, i: usize) -> u32 {
        self.weights[i]
    }
    fn table_weight(&self, i: usize) -> u32 {
        match &self.table {
            Some(t) => t[i],
            None => self.weights[i],
        }
    }
    fn in_flight(&self, i: usize) -> u32 {
        self.in_flight[i]
    }
    fn latency_ns(&self, i: usize) -> f64 {
        self.latency[i]
    }
    fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }
}
