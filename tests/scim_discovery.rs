//! Discovery endpoints and the error surface of unknown routes.

use reqwest::Method;
use serde_json::Value;

use crate::both_backends;
use crate::support::{ENTERPRISE, GROUP, USER};

both_backends! {
    async fn discovery(srv) {
        let spc = srv.get("/ServiceProviderConfig").await;
        assert_eq!(spc.status, 200);
        assert_eq!(spc.header("content-type"), Some("application/scim+json"));
        assert_eq!(spc.body["patch"]["supported"], true);
        assert_eq!(spc.body["bulk"]["supported"], true);
        assert_eq!(spc.body["bulk"]["maxOperations"], 1000);
        assert_eq!(spc.body["bulk"]["maxPayloadSize"], 1048576);
        assert_eq!(spc.body["filter"]["maxResults"], 1000);
        assert_eq!(spc.body["etag"]["supported"], true);
        assert_eq!(spc.body["sort"]["supported"], true);

        let types = srv.get("/ResourceTypes").await;
        assert_eq!(types.body["totalResults"], 2);
        let user_type = srv.get("/ResourceTypes/User").await;
        assert_eq!(user_type.body["schema"], USER);
        assert_eq!(user_type.body["schemaExtensions"][0]["schema"], ENTERPRISE);
        assert_eq!(srv.get("/ResourceTypes/Group").await.body["endpoint"], "/Groups");
        srv.get("/ResourceTypes/Nope").await.assert_error(404, None);

        let schemas = srv.get("/Schemas").await;
        assert_eq!(schemas.body["totalResults"], 3);
        let user = srv.get(&format!("/Schemas/{USER}")).await;
        let attrs = user.body["attributes"].as_array().unwrap();
        let find = |name: &str| attrs.iter().find(|a| a["name"] == name).cloned().unwrap_or(Value::Null);
        assert_eq!(find("userName")["uniqueness"], "server");
        assert_eq!(find("userName")["required"], true);
        assert_eq!(find("userName")["caseExact"], false);
        assert_eq!(find("password")["returned"], "never");
        assert_eq!(find("password")["mutability"], "writeOnly");
        assert_eq!(find("groups")["mutability"], "readOnly");
        assert_eq!(find("emails")["multiValued"], true);
        let group = srv.get(&format!("/Schemas/{GROUP}")).await;
        assert_eq!(group.body["attributes"][0]["name"], "displayName");
        assert_eq!(srv.get(&format!("/Schemas/{ENTERPRISE}")).await.status, 200);
        srv.get("/Schemas/urn:nope").await.assert_error(404, None);
    }
}

both_backends! {
    async fn unknown_routes_are_scim_404(srv) {
        srv.get("/Nope").await.assert_error(404, None);
        let r = srv.send_with(Method::GET, &format!("http://{}/nowhere", srv.addr), None, &[], None).await;
        r.assert_error(404, None);
        let r = srv.send(Method::DELETE, "/Users", None).await;
        r.assert_error(405, None);
    }
}
