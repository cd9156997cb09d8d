//! How much to measure: the full run (for docs/BENCHMARKS.md) or `--quick` (CI, about a
//! minute or two: fewer rounds, VTEP counts up to 100, churn of 30 pods).

/// The sections of a run, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Section {
    Cni,
    Vteps,
    Churn,
    Dataplane,
    Convergence,
    Disruption,
}

impl Section {
    pub const ALL: [Section; 6] = [
        Section::Cni,
        Section::Vteps,
        Section::Churn,
        Section::Dataplane,
        Section::Convergence,
        Section::Disruption,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Section::Cni => "cni",
            Section::Vteps => "vteps",
            Section::Churn => "churn",
            Section::Dataplane => "dataplane",
            Section::Convergence => "convergence",
            Section::Disruption => "disruption",
        }
    }

    pub fn parse(s: &str) -> Option<Section> {
        Section::ALL.into_iter().find(|x| x.name() == s)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub quick: bool,
    pub nodes: usize,
    pub sections: Vec<Section>,
    /// Rounds of every variant on a warm node, then on a cold one.
    pub warm: usize,
    pub cold: usize,
    /// (VTEPs, linen runs, ovs-vsctl baseline runs).
    pub vtep_sizes: Vec<(usize, usize, usize)>,
    pub churn_pods: usize,
    pub churn_levels: Vec<usize>,
    pub dp_rounds: usize,
    pub dp_seconds: u32,
    pub pings: u32,
    /// Leave/join rounds of a real node.
    pub conv_rounds: usize,
    /// Synthetic member counts.
    pub conv_sizes: Vec<usize>,
    pub conv_rounds_per_size: usize,
    /// Rounds of each disruption event, and each ping stream's length.
    pub dis_rounds: usize,
    pub dis_window: std::time::Duration,
}

impl Plan {
    pub fn full() -> Plan {
        Plan {
            quick: false,
            nodes: 3,
            sections: Section::ALL.to_vec(),
            warm: 200,
            cold: 60,
            vtep_sizes: vec![(1, 20, 5), (10, 20, 5), (100, 20, 5), (1000, 5, 2)],
            churn_pods: 200,
            churn_levels: vec![1, 4, 16],
            dp_rounds: 3,
            dp_seconds: 5,
            pings: 20,
            conv_rounds: 5,
            conv_sizes: vec![10, 100, 1000],
            conv_rounds_per_size: 5,
            dis_rounds: 3,
            dis_window: std::time::Duration::from_secs(12),
        }
    }

    pub fn quick() -> Plan {
        Plan {
            quick: true,
            warm: 15,
            cold: 8,
            vtep_sizes: vec![(1, 5, 2), (10, 5, 2), (100, 3, 2)],
            churn_pods: 30,
            dp_rounds: 1,
            dp_seconds: 2,
            pings: 5,
            conv_rounds: 2,
            conv_sizes: vec![10, 100],
            conv_rounds_per_size: 2,
            dis_rounds: 1,
            dis_window: std::time::Duration::from_secs(8),
            ..Plan::full()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sections_round_trip() {
        for s in Section::ALL {
            assert_eq!(Section::parse(s.name()), Some(s));
        }
        assert_eq!(Section::parse("nope"), None);
    }

    #[test]
    fn quick_is_smaller_and_stops_at_100_vteps() {
        let (q, f) = (Plan::quick(), Plan::full());
        assert!(q.warm < f.warm && q.churn_pods < f.churn_pods);
        assert_eq!(q.vtep_sizes.iter().map(|v| v.0).max(), Some(100));
        assert_eq!(f.vtep_sizes.iter().map(|v| v.0).max(), Some(1000));
        assert_eq!(q.churn_levels, [1, 4, 16]);
        // host-local hands each node 253 addresses; churn holds all its pods at once.
        assert!(f.churn_pods <= 253);
    }
}
