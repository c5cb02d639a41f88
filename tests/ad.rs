//! Active Directory behaviour of the LDAP source against a real Samba AD DC
//! (Debian `samba samba-ad-dc samba-ad-provision`), provisioned into a temp
//! directory and serving LDAP on 127.0.0.1:389.
//!
//! Its own test binary: only one DC can own port 389, so all tests here
//! share one DC (`samba::dc()`), each in its own OU.

#[path = "support_ad/samba.rs"]
mod samba;
#[path = "support/mod.rs"]
mod support;

use samba::{dc, guid_string};
use support::unique;

/// The harness itself: the DC answers, the sync account binds, and the
/// test's independent GUID decoding agrees with samba's own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dc_serves_ldap_and_guids_decode_like_samba() {
    let dc = dc();
    let mut admin = dc.admin().await;
    let ou = admin.ou(&unique("h")).await;
    let sam = unique("h");
    let user = admin.user(&ou, &sam, true).await;
    let bytes = admin.guid_bytes(&user.dn).await;
    assert_eq!(guid_string(&bytes), dc.samba_tool_guid("user", &sam));
    let entry = admin.read(&user.dn, &["userAccountControl"]).await;
    assert_eq!(entry.attrs["userAccountControl"], vec!["512".to_string()]);
    let usn = admin.usn_changed(&user.dn).await;
    assert!(admin.highest_committed_usn().await >= usn);
}
