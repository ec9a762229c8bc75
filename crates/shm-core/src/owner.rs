//! Who a segment belongs to: users and groups given by name or number, as the CLI's
//! `--group`/`--owner` and the daemons' `group =`/`owner =` take them; permission bits as
//! people write them.

/// Serializes permission bits as people write them, `"0600"` (not `384`): the JSON
/// of [`crate::SegmentInfo`] and the discovery listing use it.
pub fn serialize_mode<S: serde::Serializer>(mode: &u32, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{mode:04o}"))
}

/// The uid of `user`, a name or a number; `None` if there is no such user.
pub fn uid_of(user: &str) -> Option<u32> {
    user.parse().ok().or_else(|| nix::unistd::User::from_name(user).ok().flatten().map(|u| u.uid.as_raw()))
}

/// The gid of `group`, a name or a number; `None` if there is no such group.
pub fn gid_of(group: &str) -> Option<u32> {
    group.parse().ok().or_else(|| nix::unistd::Group::from_name(group).ok().flatten().map(|g| g.gid.as_raw()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_resolve() {
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(uid_of("1234"), Some(1234));
        assert_eq!(gid_of("root"), Some(0));
        assert_eq!(uid_of("no-such-user-here"), None);
        assert_eq!(gid_of("no-such-group-here"), None);
    }
}
