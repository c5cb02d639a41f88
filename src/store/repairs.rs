//! One-time repairs of stored data that SQL alone cannot do, run after the
//! migrations and recorded in `store_repairs` so each runs once.
//!
//! `fold_case_v1`: userName uniqueness and userName / group displayName
//! filters compare `scim::schema::fold_case` (NFC, then lowercase); rows
//! written before kept a plain lowercase, so an NFD name would not collide
//! with its NFC twin. Only names outside printable ASCII can differ.

use sqlx::{AssertSqlSafe, Row};

use super::{Dialect, Result, Store};

const FOLD_CASE: &str = "fold_case_v1";

impl Store {
    pub(super) async fn run_repairs(&self) -> Result<()> {
        let done: Option<String> =
            sqlx::query_scalar("SELECT name FROM store_repairs WHERE name = $1")
                .bind(FOLD_CASE)
                .fetch_optional(&self.pool)
                .await?;
        if done.is_some() {
            return Ok(());
        }
        for (table, name, lc) in [
            ("scim_users", "user_name", "user_name_lc"),
            ("scim_groups", "display_name", "display_name_lc"),
        ] {
            self.refold(table, name, lc).await?;
        }
        sqlx::query("INSERT INTO store_repairs (name, done_at) VALUES ($1, $2)")
            .bind(FOLD_CASE)
            .bind(crate::domain::now())
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Recomputes the folded column of rows whose name is not printable
    /// ASCII. Two stored users that fold alike cannot both hold the unique
    /// folded userName: the later keeps its old value and is logged, so an
    /// operator can rename one; nothing is deleted.
    async fn refold(&self, table: &str, name: &str, lc: &str) -> Result<()> {
        let non_ascii = match self.dialect {
            Dialect::Sqlite => format!("{name} GLOB '*[^ -~]*'"),
            Dialect::Postgres => format!("{name} ~ '[^ -~]'"),
        };
        let sql = format!("SELECT tenant_id, id, {name}, {lc} FROM {table} WHERE {non_ascii}");
        let rows = sqlx::query(AssertSqlSafe(sql))
            .fetch_all(&self.pool)
            .await?;
        for row in rows {
            let tenant: String = row.try_get(0)?;
            let id: String = row.try_get(1)?;
            let value: String = row.try_get(2)?;
            let old: String = row.try_get(3)?;
            let folded = scim::schema::fold_case(&value);
            if folded == old {
                continue;
            }
            let sql = format!("UPDATE {table} SET {lc} = $1 WHERE tenant_id = $2 AND id = $3");
            let updated = sqlx::query(AssertSqlSafe(sql))
                .bind(&folded)
                .bind(&tenant)
                .bind(&id)
                .execute(&self.pool)
                .await;
            match updated {
                Ok(_) => {}
                Err(e) if super::Error::is_unique_violation(&e) => {
                    tracing::warn!(
                        tenant,
                        id,
                        "userName equals another user's once Unicode-normalised; kept as is, rename one of them"
                    );
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}
