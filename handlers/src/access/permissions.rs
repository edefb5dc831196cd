//! Roles and permissions, defined once. The HTTP layer enforces them through one
//! extractor, `GET /v1/permissions` serves the matrix, and the README's table is
//! generated from [`matrix_markdown`].

use serde::{Deserialize, Serialize};

/// A workspace role. Higher roles hold every permission of the lower ones.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    schemars::JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads.
    Viewer,
    /// Reads, sends, manages consent.
    Agent,
    /// Everything but the owner-only operations.
    Admin,
    /// Everything in the workspace.
    Owner,
}

impl Role {
    /// Every role, lowest first.
    pub const ALL: [Role; 4] = [Role::Viewer, Role::Agent, Role::Admin, Role::Owner];

    /// The role's name.
    pub fn as_str(&self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Agent => "agent",
            Role::Admin => "admin",
            Role::Owner => "owner",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the role holds a permission.
    pub fn allows(&self, p: Permission) -> bool {
        *self >= p.min_role()
    }
}

macro_rules! permissions {
    ($($variant:ident = $name:literal, $role:ident, $doc:literal;)*) => {
        /// A permission on a workspace.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Permission {
            $(#[doc = $doc] $variant,)*
        }
        impl Permission {
            /// Every permission.
            pub const ALL: &'static [Permission] = &[$(Permission::$variant,)*];
            /// The permission's name.
            pub fn as_str(&self) -> &'static str {
                match self { $(Permission::$variant => $name,)* }
            }
            /// The lowest role holding it.
            pub fn min_role(&self) -> Role {
                match self { $(Permission::$variant => Role::$role,)* }
            }
            /// What it allows.
            pub fn description(&self) -> &'static str {
                match self { $(Permission::$variant => $doc,)* }
            }
        }
    };
}

permissions! {
    WorkspaceRead = "workspace.read", Viewer, "Read the workspace's settings.";
    WorkspaceManage = "workspace.manage", Owner, "Change the workspace's settings.";
    MessagesRead = "messages.read", Viewer, "Read messages and their status.";
    MessagesSend = "messages.send", Agent, "Send messages.";
    ContactsRead = "contacts.read", Viewer, "Read contacts.";
    ContactsErase = "contacts.erase", Owner, "Erase a contact's personal data.";
    ConsentRead = "consent.read", Viewer, "Read consent and opt-outs.";
    ConsentManage = "consent.manage", Agent, "Opt contacts out or in manually.";
    KeywordsRead = "keywords.read", Viewer, "Read opt-out keywords.";
    KeywordsManage = "keywords.manage", Admin, "Change opt-out keywords.";
    TemplatesRead = "templates.read", Viewer, "Read templates and their status.";
    TemplatesManage = "templates.manage", Admin, "Manage template categories.";
    TokensWrite = "tokens.write", Admin, "Store a Meta access token.";
    TokensReadMetadata = "tokens.read_metadata", Admin, "Read token metadata (never the token).";
    TokensRevoke = "tokens.revoke", Admin, "Revoke a stored token.";
    PhoneNumbersRead = "phone_numbers.read", Viewer, "List the workspace's phone numbers.";
    PhoneNumbersManage = "phone_numbers.manage", Admin, "Claim or release phone numbers.";
    OnboardingRead = "onboarding.read", Viewer, "Read Embedded Signup progress.";
    OnboardingRun = "onboarding.run", Admin, "Run Embedded Signup onboarding.";
    RateLimitsRead = "rate_limits.read", Viewer, "Read rate limits and usage.";
    RateLimitsManage = "rate_limits.manage", Admin, "Change rate limits.";
    KeysRead = "keys.read", Admin, "List API keys (no secrets).";
    KeysManage = "keys.manage", Admin, "Create and revoke API keys (up to one's own role).";
    AuditRead = "audit.read", Admin, "Read the audit log.";
    AuditVerify = "audit.verify", Admin, "Verify the audit hash chain.";
    AuditExport = "audit.export", Owner, "Export the audit log.";
    EventsRead = "events.read", Viewer, "Read the workspace's event feed.";
    WebhooksRead = "webhooks.read", Viewer, "Read outbound webhook endpoints.";
    WebhooksManage = "webhooks.manage", Admin, "Manage outbound webhook endpoints.";
    DeliveriesRead = "deliveries.read", Viewer, "Read outbound delivery attempts.";
    DeliveriesRedrive = "deliveries.redrive", Admin, "Retry failed outbound deliveries.";
    UsageRead = "usage.read", Viewer, "Read usage figures.";
}

/// One row of the served matrix.
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
pub struct MatrixRow {
    /// Permission name.
    pub permission: &'static str,
    /// What it allows.
    pub description: &'static str,
    /// The roles holding it.
    pub roles: Vec<Role>,
}

/// The role × permission matrix.
pub fn matrix() -> Vec<MatrixRow> {
    Permission::ALL
        .iter()
        .map(|p| MatrixRow {
            permission: p.as_str(),
            description: p.description(),
            roles: Role::ALL.into_iter().filter(|r| r.allows(*p)).collect(),
        })
        .collect()
}

/// The matrix as a Markdown table (for the README).
pub fn matrix_markdown() -> String {
    let mut s = String::from(
        "| permission | viewer | agent | admin | owner | allows |\n|---|---|---|---|---|---|\n",
    );
    for p in Permission::ALL {
        let cells: Vec<&str> = Role::ALL
            .iter()
            .map(|r| if r.allows(*p) { "✓" } else { "" })
            .collect();
        s.push_str(&format!(
            "| `{}` | {} | {} |\n",
            p.as_str(),
            cells.join(" | "),
            p.description()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_least_thirty_permissions_and_a_strict_order() {
        assert!(Permission::ALL.len() >= 30);
        assert!(Role::Owner.allows(Permission::AuditExport));
        assert!(!Role::Admin.allows(Permission::AuditExport));
        assert!(Role::Agent.allows(Permission::MessagesSend));
        assert!(!Role::Viewer.allows(Permission::MessagesSend));
        assert!(!Role::Viewer.allows(Permission::TokensReadMetadata));
        let names: std::collections::HashSet<_> =
            Permission::ALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(names.len(), Permission::ALL.len());
        assert_eq!(Role::parse("admin"), Some(Role::Admin));
        assert_eq!(Role::parse("root"), None);
    }
}
