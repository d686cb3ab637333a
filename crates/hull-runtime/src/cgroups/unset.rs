//! Engines write 0 for "not set": docker 20.10 puts `blockIO.weight: 0` and
//! `cpu.shares: 0` in every config.json. runc's libcontainer skips a field whose value
//! is 0, so hull does too; writing the 0 fails where the file is missing (no CFQ/BFQ
//! blkio.weight) or is out of the kernel's range.

use oci_spec::runtime::LinuxResources;

/// `r` with every field whose 0 means "unset" to runc set to None.
pub(crate) fn zero_means_unset(r: &LinuxResources) -> LinuxResources {
    let mut r = r.clone();
    if let Some(mut b) = r.block_io().clone() {
        b.set_weight(unset_zero(b.weight()));
        b.set_leaf_weight(unset_zero(b.leaf_weight()));
        r.set_block_io(Some(b));
    }
    if let Some(mut c) = r.cpu().clone() {
        c.set_shares(unset_zero(c.shares()));
        c.set_quota(unset_zero(c.quota()));
        c.set_period(unset_zero(c.period()));
        c.set_realtime_runtime(unset_zero(c.realtime_runtime()));
        c.set_realtime_period(unset_zero(c.realtime_period()));
        r.set_cpu(Some(c));
    }
    if let Some(mut m) = *r.memory() {
        m.set_limit(unset_zero(m.limit()));
        m.set_reservation(unset_zero(m.reservation()));
        m.set_swap(unset_zero(m.swap()));
        r.set_memory(Some(m));
    }
    r
}

fn unset_zero<T: PartialEq + Default>(v: Option<T>) -> Option<T> {
    v.filter(|v| *v != T::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_zeroes_are_unset() {
        let r: LinuxResources = serde_json::from_str(
            r#"{"blockIO": {"weight": 0, "leafWeight": 0}, "cpu": {"shares": 0, "quota": 0, "period": 0},
                "memory": {"limit": 0, "reservation": 0, "swap": 0}}"#,
        )
        .unwrap();
        let r = zero_means_unset(&r);
        let b = r.block_io().clone().unwrap();
        assert_eq!((b.weight(), b.leaf_weight()), (None, None));
        let c = r.cpu().clone().unwrap();
        assert_eq!((c.shares(), c.quota(), c.period()), (None, None, None));
        let m = r.memory().unwrap();
        assert_eq!((m.limit(), m.reservation(), m.swap()), (None, None, None));
        for g in crate::cgroups::group::Group::ALL {
            if !matches!(g, crate::cgroups::group::Group::Devices) {
                assert!(!g.is_set(&r), "{g:?} still counts as set");
            }
        }
    }

    #[test]
    fn non_zero_values_stay() {
        let r: LinuxResources =
            serde_json::from_str(r#"{"blockIO": {"weight": 500}, "memory": {"limit": 1048576}}"#)
                .unwrap();
        let r = zero_means_unset(&r);
        assert_eq!(r.block_io().as_ref().unwrap().weight(), Some(500));
        assert_eq!(r.memory().as_ref().unwrap().limit(), Some(1048576));
    }
}
