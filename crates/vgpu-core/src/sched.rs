//! Who runs next on a GPU that several containers share: the policy behind the node table's
//! token (`vgpu_region::node`).
//!
//! The GPU time-slices the contexts of different processes, so the time a container's work is
//! in flight is not its GPU time while others have work too: a kernel queued behind a
//! neighbour's slice looks busy while the neighbour runs. The containers on a GPU therefore pass
//! one token: only the holder's processes launch, for a slice, and then it goes to the best
//! contender. With one container in flight at a time, what each measures is its own.
//!
//! Best means, in order: high priority (`CUDA_TASK_PRIORITY=0`) before low; then the claim
//! (a limited container within its ceiling, then unlimited ones, then bursting containers
//! beyond their limit); then the least *virtual time*, the wall time it held the token divided
//! by its share, so that containers that all want more than they can get split the GPU in
//! proportion to their limits. A container whose virtual time fell behind while it was away
//! resumes at the others' level ([`resume_held`]), so it cannot claim a backlog.
//!
//! Pure functions over plain values; time is an argument.

use crate::limiter::PPM;

/// What a container asks the GPU for; the order is the precedence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Claim {
    /// A limited container within its ceiling (or a bursting one within its guaranteed share).
    Guaranteed = 0,
    /// A container without a limit: it takes what the limited ones leave.
    Unlimited = 1,
    /// A bursting container beyond its limit: only time nobody else wants.
    Burst = 2,
}

impl Claim {
    pub fn to_wire(self) -> u32 {
        self as u32 + 1
    }

    /// `None` for 0 (not contending) or a value no version of us writes.
    pub fn from_wire(v: u32) -> Option<Claim> {
        match v {
            1 => Some(Claim::Guaranteed),
            2 => Some(Claim::Unlimited),
            3 => Some(Claim::Burst),
            _ => None,
        }
    }
}

/// The claim a container makes now: `share` its limit (ppm; `None` = unlimited), `within`
/// whether its budget allows a launch. `None`: it waits for budget, not for the GPU.
pub fn claim(share: Option<u64>, burst: bool, within: bool) -> Option<Claim> {
    match (share, within, burst) {
        (None, _, _) => Some(Claim::Unlimited),
        (Some(_), true, _) => Some(Claim::Guaranteed),
        (Some(_), false, true) => Some(Claim::Burst),
        (Some(_), false, false) => None,
    }
}

/// One container that wants the GPU (or holds it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contender {
    pub high_priority: bool,
    pub claim: Claim,
    /// Wall time it has held the token, ns.
    pub held_ns: u64,
    /// Its share in ppm; 0 (unlimited) weighs as the whole GPU.
    pub share_ppm: u64,
}

impl Contender {
    /// Held time per unit of share, in ns of a whole GPU.
    pub fn vtime(&self) -> u128 {
        vtime(self.held_ns, self.share_ppm)
    }
}

pub fn vtime(held_ns: u64, share_ppm: u64) -> u128 {
    let weight = if share_ppm == 0 { PPM } else { share_ppm.min(PPM) };
    held_ns as u128 * PPM as u128 / weight as u128
}

/// A contender's place in the order: the least goes first.
pub fn rank(c: &Contender) -> impl Ord + use<> {
    (!c.high_priority, c.claim, c.vtime())
}

/// The index of the contender that should hold the token; ties go to the earliest.
pub fn best(contenders: &[Contender]) -> Option<usize> {
    contenders.iter().enumerate().min_by_key(|(i, c)| (rank(c), *i)).map(|(i, _)| i)
}

/// Whether a holder that has held the token since `slice_start` must offer it now.
pub fn slice_over(now: u64, slice_start: u64, slice_ns: u64) -> bool {
    now.saturating_sub(slice_start) >= slice_ns
}

/// The held time a container resumes contending with: at least the least virtual time among
/// the others (converted to its own share), so that after a pause it competes as an equal
/// rather than by the time it was away.
pub fn resume_held(held_ns: u64, share_ppm: u64, others_min_vtime: Option<u128>) -> u64 {
    let Some(floor) = others_min_vtime else { return held_ns };
    let weight = if share_ppm == 0 { PPM } else { share_ppm.min(PPM) };
    let floor_held = (floor * weight as u128 / PPM as u128).min(u64::MAX as u128) as u64;
    held_ns.max(floor_held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::limiter::{BucketState, burst_ns, share_ppm};

    const MS: u64 = 1_000_000;

    fn c(high: bool, claim: Claim, held_ns: u64, share_ppm: u64) -> Contender {
        Contender { high_priority: high, claim, held_ns, share_ppm }
    }

    #[test]
    fn precedence_is_priority_then_claim_then_virtual_time() {
        let g = c(false, Claim::Guaranteed, 900, 300_000);
        let u = c(false, Claim::Unlimited, 0, 0);
        let b = c(false, Claim::Burst, 0, 300_000);
        assert_eq!(best(&[b, u, g]), Some(2), "a guaranteed claim beats any amount of virtual time");
        assert_eq!(best(&[b, u]), Some(1), "unlimited before burst");
        let high = c(true, Claim::Burst, 10_000, 300_000);
        assert_eq!(best(&[g, high]), Some(1), "high priority first");
        // 30 % that held 3 ms and 60 % that held 5 ms: the 60 % one is behind per unit of share.
        let a = c(false, Claim::Guaranteed, 3 * MS, 300_000);
        let b = c(false, Claim::Guaranteed, 5 * MS, 600_000);
        assert_eq!(best(&[a, b]), Some(1));
        assert_eq!(best(&[]), None);
        assert_eq!(best(&[a, a]), Some(0), "ties go to the earliest");
    }

    #[test]
    fn claims() {
        assert_eq!(claim(None, false, false), Some(Claim::Unlimited));
        assert_eq!(claim(Some(1), false, true), Some(Claim::Guaranteed));
        assert_eq!(claim(Some(1), true, false), Some(Claim::Burst));
        assert_eq!(claim(Some(1), false, false), None);
        for cl in [Claim::Guaranteed, Claim::Unlimited, Claim::Burst] {
            assert_eq!(Claim::from_wire(cl.to_wire()), Some(cl));
        }
        assert_eq!(Claim::from_wire(0), None);
        assert_eq!(Claim::from_wire(77), None);
    }

    #[test]
    fn a_returning_container_competes_as_an_equal() {
        // The others are at 10 ms of whole-GPU virtual time; a 30 % container resumes at 3 ms held.
        assert_eq!(resume_held(0, 300_000, Some(10 * MS as u128)), 3 * MS);
        assert_eq!(resume_held(5 * MS, 300_000, Some(10 * MS as u128)), 5 * MS, "never goes back");
        assert_eq!(resume_held(7, 0, None), 7);
    }

    /// One tenant of a simulated GPU: always has work (compute-bound) unless `until` passed.
    struct Tenant {
        share: Option<u64>,
        burst: bool,
        high: bool,
        bucket: BucketState,
        held: u64,
        contending: bool,
        busy: u64,
        from: u64,
        until: u64,
    }

    const SLICE: u64 = 5 * MS;
    const STEP: u64 = 100_000;

    /// Runs the token policy with a bucket per tenant on a GPU for `wall` ns, in 100 µs steps:
    /// the holder runs while its claim stands and, at every slice end, the best contender takes
    /// over. Returns each tenant's share of the wall time it was present, in percent.
    fn simulate(tenants: &mut [Tenant], wall: u64) -> Vec<f64> {
        let mut holder: Option<usize> = None;
        let mut holder_claim = None;
        let mut slice_start = 0;
        let mut now = 1;
        while now < wall {
            let mut claims: Vec<Option<Contender>> = tenants
                .iter()
                .map(|t| {
                    if now < t.from || now >= t.until {
                        return None;
                    }
                    let within = match t.share {
                        Some(s) => t.bucket.wait_ns(now, s, burst_ns(s, 100 * MS), 0) == 0,
                        None => true,
                    };
                    let claim = claim(t.share, t.burst, within)?;
                    Some(Contender { high_priority: t.high, claim, held_ns: t.held, share_ppm: t.share.unwrap_or(0) })
                })
                .collect();
            // A container that starts contending again resumes at the others' level.
            for i in 0..tenants.len() {
                let now_claims = claims[i].is_some();
                if now_claims && !tenants[i].contending {
                    let floor =
                        (0..claims.len()).filter(|&j| j != i).filter_map(|j| claims[j]).map(|c| c.vtime()).min();
                    let t = &mut tenants[i];
                    t.held = resume_held(t.held, t.share.unwrap_or(0), floor);
                    claims[i].as_mut().unwrap().held_ns = t.held;
                }
                tenants[i].contending = now_claims;
            }
            let holder_claims = holder.is_some_and(|h| claims[h].is_some());
            if !holder_claims || slice_over(now, slice_start, SLICE) {
                let ids: Vec<usize> = (0..claims.len()).filter(|&i| claims[i].is_some()).collect();
                let cands: Vec<Contender> = ids.iter().map(|&i| claims[i].unwrap()).collect();
                holder = best(&cands).map(|k| ids[k]);
                holder_claim = holder.and_then(|h| claims[h]).map(|c| c.claim);
                slice_start = now;
            }
            if let Some(h) = holder {
                let t = &mut tenants[h];
                t.held += STEP;
                t.busy += STEP;
                // Time taken beyond the limit was nobody else's: it does not use up the guarantee.
                // The claim is the slice's: a burst slice stays uncharged to its end.
                if holder_claim != Some(Claim::Burst) {
                    t.bucket.consume(STEP);
                }
            }
            now += STEP;
        }
        tenants.iter().map(|t| t.busy as f64 * 100.0 / (t.until.min(wall) - t.from) as f64).collect()
    }

    fn tenant(pct: u32, burst: bool) -> Tenant {
        Tenant {
            share: share_ppm(pct as u64),
            burst,
            high: false,
            bucket: BucketState::default(),
            held: 0,
            contending: false,
            busy: 0,
            from: 1,
            until: u64::MAX,
        }
    }

    /// The sharing the policy must give, as a table: limits (0 = unlimited), burst flags, expected shares.
    #[test]
    fn scenario_table() {
        // (limit in percent, bursts) per tenant, and the shares each should get.
        type Scenario = (&'static [(u32, bool)], &'static [f64]);
        let table: &[Scenario] = &[
            (&[(25, false)], &[25.0]),
            (&[(30, false), (60, false)], &[30.0, 60.0]),
            (&[(20, false), (30, false), (40, false)], &[20.0, 30.0, 40.0]),
            (&[(60, false), (60, false)], &[50.0, 50.0]),
            (&[(30, false), (0, false)], &[30.0, 70.0]),
            (&[(30, true)], &[100.0]),
            (&[(30, true), (60, false)], &[40.0, 60.0]),
            (&[(30, true), (60, true)], &[33.3, 66.7]),
            (&[(30, true), (0, false)], &[30.0, 70.0]),
        ];
        for (limits, want) in table {
            let mut ts: Vec<Tenant> = limits.iter().map(|&(p, b)| tenant(p, b)).collect();
            let got = simulate(&mut ts, 20_000 * MS);
            for (g, w) in got.iter().zip(want.iter()) {
                assert!((g - w).abs() < 1.0, "{limits:?}: got {got:.1?}, want {want:?}");
            }
        }
    }

    #[test]
    fn a_late_comer_does_not_take_the_gpu_for_its_absence() {
        // Two unlimited containers; the second arrives after 10 s. From then on they split
        // evenly at once: the newcomer resumes at the other's virtual time.
        let mut ts = vec![tenant(0, false), tenant(0, false)];
        ts[1].from = 10_000 * MS;
        let got = simulate(&mut ts, 12_000 * MS);
        assert!((got[1] - 50.0).abs() < 2.0, "{got:?}");
    }

    #[test]
    fn high_priority_runs_first() {
        let mut ts = vec![tenant(0, false), tenant(0, false)];
        ts[1].high = true;
        let got = simulate(&mut ts, 2_000 * MS);
        assert!(got[1] > 99.0 && got[0] < 1.0, "{got:?}");
    }
}
