//! Each seed's model, computed from the shipped catalogs and tenant files.
use super::*;

#[test]
fn shipped_mappings_validate_without_errors() {
    let set = shipped();
    assert_eq!(set.catalogs().len(), 5);
    assert_eq!(set.tenants().len(), 5);
}

fn tenant(name: &str) -> CompiledTenant {
    shipped()
        .tenant(&TenantName::from(name))
        .expect("tenant")
        .clone()
}

fn ldap(dn: &str) -> GroupFact {
    GroupFact {
        dn: Some(dn.into()),
        source: Some("ldap".into()),
        ..group("ldap-group")
    }
}

#[test]
fn liveperson_agent_profiles_and_limits() {
    let t = tenant("acme-liveperson");
    let support = ldap("cn=support agents,ou=groups,dc=acme,dc=example");
    let lead = GroupFact {
        source: Some("okta".into()),
        ..group("lp-team-leads-emea")
    };
    let r = compute_tenant(
        &t,
        &[
            user("agent", vec![support.clone()]),
            user("senior", vec![support.clone(), group("Support Seniors")]),
            user("lead", vec![lead, support]),
        ],
    );
    // Default Agent: "Initiate CoBrowse view-only session" Yes; "Join agents' conversations in group" No;
    // core permissions always present.
    check_perms(
        &r,
        "agent",
        &[
            "initiate_cobrowse_view_only_session",
            "view_own_performance",
            "change_own_user_settings",
        ],
        &["join_agents_conversations_in_group"],
    );
    // Senior agent profile toggles the join permission on; agent_default loses (one profile per role).
    check_perms(&r, "senior", &["join_agents_conversations_in_group"], &[]);
    assert_eq!(held(&r, "senior"), ["senior_agent"]);
    let lost = &r.user("senior").unwrap().lost;
    assert_eq!(
        lost[0].target,
        Target::Profile(ProfileId::from("agent_default"))
    );
    assert_eq!(lost[0].reason.kind(), "max_profiles_per_role_per_user");
    // Two roles, one profile each: allowed; the duplicate agent_default is merged, not a conflict.
    assert_eq!(held(&r, "lead"), ["senior_agent_manager", "agent_default"]);
    check_perms(
        &r,
        "lead",
        &[
            "manage_agent_users_in_group",
            "view_queue_health_dashboard",
            "initiate_voice_conversation",
        ],
        &[],
    );
}

#[test]
fn liveperson_account_defaults_and_five_profiles() {
    let cat = std::fs::read_to_string(format!("{SHIPPED}/catalogs/liveperson.yaml")).unwrap();
    let tenant_yaml = "catalog: liveperson\nrules:\n  - {match: {display_name: A}, assign: {profiles: [agent_default, junior_agent, senior_agent_manager, campaign_manager_default, admin_default]}}\n";
    let set = validate_sources(&[
        ("m/catalogs/liveperson.yaml", cat.as_str()),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap();
    let r = compute_tenant(
        set.tenant(&TenantName::from("t")).unwrap(),
        &[user("u", vec![group("A")])],
    );
    // junior_agent is a second Agent profile: refused ("only one from within each role"); with four
    // roles, the four remaining profiles are the most a user can hold.
    assert_eq!(
        held(&r, "u"),
        [
            "agent_default",
            "senior_agent_manager",
            "campaign_manager_default",
            "admin_default"
        ]
    );
    let kinds: Vec<&str> = r
        .user("u")
        .unwrap()
        .lost
        .iter()
        .map(|l| l.reason.kind())
        .collect();
    assert_eq!(kinds, ["max_profiles_per_role_per_user"]);
    // "Dependant on account" with no account_defaults: off.
    let am = &r.tenant().targets()[&Target::Profile(ProfileId::from("agent_manager_default"))];
    assert_eq!(
        am.states[&PermissionId::from("handle_messaging_conversations")],
        PermState::Off(StateReason::AccountDefaultUnset)
    );
    let tenant_yaml = "catalog: liveperson\nrules:\n  - {match: {display_name: A}, assign: {profiles: [agent_default, agent_manager_default, campaign_manager_default, admin_default]}}\n  - {match: {display_name: A}, assign: {roles: [agent]}, priority: -1}\n";
    let set = validate_sources(&[
        ("m/catalogs/liveperson.yaml", cat.as_str()),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap();
    let r = compute_tenant(
        set.tenant(&TenantName::from("t")).unwrap(),
        &[user("u", vec![group("A")])],
    );
    assert_eq!(r.user("u").unwrap().assignments.len(), 4);
    assert_eq!(
        r.user("u").unwrap().lost[0].reason.kind(),
        "max_profiles_per_role_per_user"
    );
}

/// The shipped LivePerson catalog with `tenant_yaml` as tenant `t`.
fn liveperson_with(tenant_yaml: &str) -> CompiledTenant {
    let cat = std::fs::read_to_string(format!("{SHIPPED}/catalogs/liveperson.yaml")).unwrap();
    let set = validate_sources(&[
        ("m/catalogs/liveperson.yaml", cat.as_str()),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap_or_else(|e| panic!("{e:?}"));
    set.tenant(&TenantName::from("t")).unwrap().clone()
}

fn effective(r: &TenantResult, user: &str, of: &[&str]) -> Vec<String> {
    let eff = r.user(user).unwrap();
    of.iter()
        .filter(|p| eff.permissions.contains(&PermissionId::from(**p)))
        .map(|p| (*p).to_owned())
        .collect()
}

#[test]
fn liveperson_api_credentials_manager_also_assigns_lite_and_api_developer() {
    // "Whenever you assign this permission, also assign Bot Builder Lite and API Developer": written in
    // the Agent manager, Campaign manager and Admin tables. The Agent table has no API Developer row.
    let t = liveperson_with(
        "catalog: liveperson
profiles:
  - {id: admin_creds, role: admin, toggles: {cb_api_credentials_manager: on}}
  - {id: cm_creds, role: campaign_manager, toggles: {cb_api_credentials_manager: on}}
  - {id: agent_creds, role: agent, toggles: {cb_api_credentials_manager: on, cb_bot_builder_lite: on}}
  - {id: am_dev, role: agent_manager, toggles: {cb_api_developer: on}}
rules:
  - {match: {display_name: AD}, assign: {profiles: [admin_creds]}}
  - {match: {display_name: CM}, assign: {profiles: [cm_creds]}}
  - {match: {display_name: AG}, assign: {profiles: [agent_creds]}}
  - {match: {display_name: DV}, assign: {profiles: [am_dev]}}
",
    );
    let r = compute_tenant(
        &t,
        &[
            user("admin", vec![group("AD")]),
            user("cm", vec![group("CM")]),
            user("agent", vec![group("AG")]),
            user("agent_dev", vec![group("AG"), group("DV")]),
        ],
    );
    let cb = [
        "cb_api_credentials_manager",
        "cb_api_developer",
        "cb_bot_builder_lite",
    ];
    // Admin and Campaign manager: the two are granted with it, though their toggles stay off.
    assert_eq!(effective(&r, "admin", &cb), cb);
    assert_eq!(effective(&r, "cm", &cb), cb);
    let why = explain(&r, "admin", Some(&PermissionId::from("cb_api_developer"))).unwrap();
    assert!(
        why.to_string().contains("  implied by 'cb_api_credentials_manager' (implies of role 'admin') in profile 'admin_creds' <- rule #0 (m/tenants/t.yaml:8:6, priority 0) <- group 'AD'\n"),
        "{why}"
    );
    // Agent alone: never given API Developer by implication; its grant needs it, so it is dropped.
    assert_eq!(effective(&r, "agent", &cb), ["cb_bot_builder_lite"]);
    let why = explain(
        &r,
        "agent",
        Some(&PermissionId::from("cb_api_credentials_manager")),
    )
    .unwrap();
    assert!(
        matches!(&why.permissions[0].why_not[0], WhyNot::MissingRequires { missing, missing_in_role, .. }
            if missing.is_empty() && missing_in_role == &[RoleRequires { role: RoleId::from("agent"), missing: vec![PermissionId::from("cb_api_developer")] }]),
        "{why}"
    );
    assert!(
        why.to_string().contains(
            "dropped: role 'agent' requires 'cb_api_developer' for it, which is not effective"
        ),
        "{why}"
    );
    // Agent + Agent manager ("a manager who also takes chats"): API Developer from the other role.
    assert_eq!(effective(&r, "agent_dev", &cb), cb);
}

#[test]
fn liveperson_brand_profile_in_the_shipped_tenant() {
    let t = tenant("acme-liveperson");
    let admins = GroupFact {
        external_id: Some("7f3c2a10-admins".into()),
        ..group("CC admins")
    };
    let r = compute_tenant(
        &t,
        &[
            user("integrator", vec![group("LP Bot Integrators")]),
            user("both", vec![group("LP Bot Integrators"), admins.clone()]),
            user("admin", vec![admins]),
        ],
    );
    assert_eq!(held(&r, "integrator"), ["bot_integrations_manager"]);
    check_perms(
        &r,
        "integrator",
        &[
            "cb_api_credentials_manager",
            "cb_bot_builder_lite",
            "cb_api_developer",
            "manage_campaigns",
        ],
        &["cb_bot_builder", "manage_users_and_roles"],
    );
    // One profile per role: the brand profile (priority 5) keeps the Campaign manager slot.
    assert_eq!(
        held(&r, "both"),
        ["bot_integrations_manager", "admin_default"]
    );
    let lost = &r.user("both").unwrap().lost;
    assert_eq!(
        (lost[0].target.id(), lost[0].reason.kind()),
        ("campaign_manager_default", "max_profiles_per_role_per_user")
    );
    assert_eq!(
        t.profiles()
            .keys()
            .map(ProfileId::as_str)
            .collect::<Vec<_>>(),
        ["bot_integrations_manager"]
    );
    // The Admin is protected: held here, unheld without the admins group.
    assert!(r.unheld_protected_roles().is_empty());
    let r = compute_tenant(&t, &[user("integrator", vec![group("LP Bot Integrators")])]);
    assert_eq!(r.unheld_protected_roles(), [RoleId::from("admin")]);
}

#[test]
fn protected_roles_are_those_the_seeds_cannot_do_without() {
    let set = shipped();
    let mut protected: Vec<String> = set
        .catalogs()
        .values()
        .flat_map(|c| {
            c.roles()
                .values()
                .filter(|r| r.protected)
                .map(move |r| format!("{}/{}", c.id(), r.id))
        })
        .collect();
    protected.sort();
    assert_eq!(protected, ["gms/owner", "liveperson/admin", "loyjoy/owner"]);
}

#[test]
fn liveperson_account_defaults_only_answer_dependant_on_account() {
    let cat = std::fs::read_to_string(format!("{SHIPPED}/catalogs/liveperson.yaml")).unwrap();
    let tenant_yaml = "catalog: liveperson\naccount_defaults:\n  handle_messaging_conversations: on\n  view_own_performance: on\n  join_agents_conversations_in_group: off\n  change_own_user_settings: on\n";
    let errors = validate_sources(&[
        ("m/catalogs/liveperson.yaml", cat.as_str()),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap_err();
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [
            "m/tenants/t.yaml:4:3: account_defaults names 'view_own_performance', a core permission of role 'agent' and 'default: account' in no role; core permissions are always on, so an account default would change nothing",
            "m/tenants/t.yaml:5:3: account_defaults names 'join_agents_conversations_in_group', which is 'default: account' in no role of catalog 'liveperson' (default off in role 'agent', on in role 'agent_manager'); account_defaults only decides 'default: account' entries",
            "m/tenants/t.yaml:6:3: account_defaults names 'change_own_user_settings', a core permission of roles 'admin', 'agent', 'agent_manager', 'campaign_manager' and 'default: account' in no role; core permissions are always on, so an account default would change nothing",
        ]
    );
}

#[test]
fn gms_single_owner_ranks_and_single_role() {
    let t = tenant("initech-gms");
    let mut late = user("zz-late", vec![group("Platform Leads")]);
    late.created = "2024-06-01T00:00:00Z".into();
    let mut early = user("aa-early", vec![group("Platform Leads")]);
    early.created = "2023-01-01T00:00:00Z".into();
    let admin = user(
        "admin",
        vec![
            GroupFact {
                source: Some("okta".into()),
                ..group("Bot Admins")
            },
            group("bot-designers-fr"),
        ],
    );
    let r = compute_tenant(&t, &[late, early, admin, user("nobody", vec![])]);
    // "Number per company: 1": the earliest-created Platform Lead keeps Owner; the other is refused.
    assert_eq!(held(&r, "aa-early"), ["owner"]);
    assert_eq!(held(&r, "zz-late"), ["designer"]);
    let refused = r
        .refusals()
        .iter()
        .find(|x| x.user_id == "zz-late" && x.lost.reason.kind() == "max_per_tenant")
        .expect("refusal");
    assert_eq!(
        refused.lost.reason,
        LossReason::MaxPerTenant {
            role: RoleId::from("owner"),
            max: 1,
            holders: vec!["aa-early".into()]
        }
    );
    let why = explain(
        &r,
        "zz-late",
        Some(&PermissionId::from("company_billing_plan_update")),
    )
    .unwrap();
    assert!(
        why.to_string()
            .contains("refused by limit max_per_tenant 1 of role 'owner', held by user 'aa-early'"),
        "{why}"
    );
    // Owner has "Company billing plan: Data creation, viewing, updating, deletion"; Designer only viewing,
    // and "Agent import: Action not allowed".
    check_perms(
        &r,
        "aa-early",
        &["company_billing_plan_update", "agent_import"],
        &[],
    );
    check_perms(
        &r,
        "zz-late",
        &["company_billing_plan_view", "agent_scenario_update"],
        &[
            "company_billing_plan_update",
            "agent_import",
            "project_create",
        ],
    );
    // Administrator (50) beats designer (10): one role per user; Administrator may invite users.
    assert_eq!(held(&r, "admin"), ["administrator"]);
    check_perms(
        &r,
        "admin",
        &["invited_users_create", "agent_import"],
        &["company_name_update"],
    );
    assert_eq!(held(&r, "nobody"), ["designer"]);
    let catalog = t.catalog();
    let rank = |id: &str| catalog.role(&RoleId::from(id)).unwrap().rank.unwrap();
    assert!(
        rank("designer") < rank("manager")
            && rank("manager") < rank("administrator")
            && rank("administrator") < rank("owner")
    );
}

#[test]
fn gms_new_user_never_displaces_the_owner() {
    let t = tenant("initech-gms");
    let cto = GroupFact {
        external_id: Some("initech-cto".into()),
        ..group("CTO")
    };
    let mut holder = user("m-holder", vec![group("Platform Leads")]);
    holder.created = "2020-01-01T00:00:00Z".into();
    let mut cto_user = user("a-cto", vec![cto]);
    cto_user.created = "2025-01-01T00:00:00Z".into();
    // company_owner has priority 100 > platform_leads 90: the CTO rule wins the slot by priority.
    let r = compute_tenant(&t, &[holder.clone(), cto_user]);
    assert_eq!(held(&r, "a-cto"), ["owner"]);
    assert_eq!(held(&r, "m-holder"), ["designer"]);
    // Same rule: the earlier-created keeps it.
    let mut newcomer = user("a-new", vec![group("Platform Leads")]);
    newcomer.created = "2025-01-01T00:00:00Z".into();
    let r = compute_tenant(&t, &[holder, newcomer]);
    assert_eq!(held(&r, "m-holder"), ["owner"]);
}

#[test]
fn loyjoy_combined_roles_union() {
    let t = tenant("globex-loyjoy");
    let analysts = GroupFact {
        source: Some("azure-ad".into()),
        ..group("bi-analytics-de")
    };
    let r = compute_tenant(
        &t,
        &[
            user("u", vec![analysts, group("chatbot content")]),
            user("plain", vec![]),
        ],
    );
    // Data viewer + Knowledge editor + Editor + default Revision: all combined.
    assert_eq!(
        held(&r, "u"),
        ["data_viewer", "knowledge_editor", "editor", "revision"]
    );
    check_perms(
        &r,
        "u",
        &[
            "data_view",
            "knowledge_edit",
            "data_anonymized_view",
            "analytics_edit",
            "live_view",
        ],
        &["data_export", "secrets_edit"],
    );
    check_perms(
        &r,
        "plain",
        &["data_view", "analytics_view"],
        &["data_edit", "knowledge_edit"],
    );
    assert!(r.refusals().is_empty());
}

#[test]
fn iadvize_custom_roles_and_reports_requirement() {
    let t = tenant("hooli-iadvize");
    let cc = GroupFact {
        source: Some("okta".into()),
        ..group("cc-managers-de")
    };
    let r = compute_tenant(
        &t,
        &[
            user("both", vec![group("Customer Care Managers"), cc]),
            user(
                "out",
                vec![GroupFact {
                    external_id: Some("hooli-outsourcing-sup".into()),
                    ..group("x")
                }],
            ),
        ],
    );
    // manager_anonymized (20) beats manager (10): one role per user, loser explained.
    assert_eq!(held(&r, "both"), ["manager_anonymized"]);
    check_perms(
        &r,
        "both",
        &["access_to_supervision_report", "access_to_reports"],
        &["access_to_user_performance_data_in_reports"],
    );
    let why = explain(
        &r,
        "both",
        Some(&PermissionId::from(
            "access_to_user_performance_data_in_reports",
        )),
    )
    .unwrap();
    let text = why.to_string();
    assert!(
        text.contains(
            "off in custom role 'manager_anonymized' (toggled by custom role 'manager_anonymized')"
        ),
        "{text}"
    );
    assert!(
        text.contains("role 'manager' from rule 'managers'")
            && text.contains("lost to custom role 'manager_anonymized'"),
        "{text}"
    );
    check_perms(
        &r,
        "out",
        &["access_to_reports", "access_to_people"],
        &["access_to_website_sales_indicators", "access_to_automation"],
    );
    // A custom role without "access to reports" loses the Supervision report through `requires`.
    let cat = std::fs::read_to_string(format!("{SHIPPED}/catalogs/iadvize.yaml")).unwrap();
    let tenant_yaml = "catalog: iadvize\nrules:\n  - {match: {display_name: N}, assign: {custom_roles: [manager_no_automation_reports]}}\n";
    let set = validate_sources(&[
        ("m/catalogs/iadvize.yaml", cat.as_str()),
        ("m/tenants/t.yaml", tenant_yaml),
    ])
    .unwrap();
    let r = compute_tenant(
        set.tenant(&TenantName::from("t")).unwrap(),
        &[user("n", vec![group("N")])],
    );
    check_perms(
        &r,
        "n",
        &["access_to_people"],
        &[
            "access_to_supervision_report",
            "access_to_production_report",
            "access_to_reports",
        ],
    );
    let why = explain(
        &r,
        "n",
        Some(&PermissionId::from("access_to_supervision_report")),
    )
    .unwrap();
    assert!(
        matches!(&why.permissions[0].why_not[0], WhyNot::MissingRequires { missing, .. } if missing == &[PermissionId::from("access_to_reports")])
    );
}

#[test]
fn haptik_flags_are_roles_of_their_own() {
    let t = tenant("umbrella-haptik");
    let tl = GroupFact {
        source: Some("azure-ad".into()),
        ..group("sac-tl-north")
    };
    let r = compute_tenant(
        &t,
        &[
            user("tl", vec![group("Support Chat Agents"), tl]),
            user("agent", vec![group("Support Chat Agents")]),
        ],
    );
    // chat_agent offered twice: granted once, from the higher-priority team_leads rule.
    let tl_eff = r.user("tl").unwrap();
    let chat = tl_eff
        .assignments
        .iter()
        .find(|a| a.target.id() == "chat_agent")
        .unwrap();
    assert!(
        matches!(&chat.source, Source::Rule { rule, .. } if rule.id == Some(RuleId::from("team_leads")))
    );
    assert_eq!(chat.also_from.len(), 1);
    check_perms(
        &r,
        "tl",
        &[
            "take_and_respond_to_chats",
            "manage_teams",
            "view_businesses_canned_responses_user_search",
            "assign_chats_same_team",
            "assign_chats_different_team",
        ],
        &[],
    );
    check_perms(
        &r,
        "agent",
        &[
            "take_and_respond_to_chats",
            "inactive_auto_logout",
            "assign_chats_same_team",
        ],
        &["manage_teams", "view_end_user_personal_details"],
    );
}

#[test]
fn liveperson_profile_may_not_disable_an_agent_core_permission() {
    // "core permissions ... can never be disabled": a profile of the shipped
    // Agent role that turns off its core "View own performance" is refused,
    // at the line and column of that toggle.
    let dir = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../mappings/catalogs/liveperson.yaml"
    );
    let text = std::fs::read_to_string(dir).unwrap();
    let bad = text.replacen(
        "profiles:\n",
        "profiles:\n  - id: broken\n    name: Broken\n    role: agent\n    toggles: {view_own_performance: off}\n",
        1,
    );
    let line = bad
        .lines()
        .position(|l| l.contains("toggles: {view_own_performance: off}"))
        .unwrap()
        + 1;
    let errors = validate_sources(&[("m/catalogs/liveperson.yaml", bad.as_str())]).unwrap_err();
    let texts: Vec<String> = errors.iter().map(ToString::to_string).collect();
    assert_eq!(
        texts,
        [format!("m/catalogs/liveperson.yaml:{line}:15: profile 'broken' disables core permission 'view_own_performance' of role 'agent'; core permissions can never be disabled")],
        "{texts:?}"
    );
}
