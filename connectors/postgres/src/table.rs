//! A table and its columns, as the catalog describes them.

use anyhow::{anyhow, bail, Result};
use tokio_postgres::Client;

use crate::pg::{describe, quote_ident};

/// One column of a table.
#[derive(Debug, Clone)]
pub struct Column {
    /// Column name as stored (case kept).
    pub name: String,
    /// Position in the table (`attnum`).
    pub num: i16,
    /// The SQL type as `format_type` spells it (e.g. `character varying(20)`).
    pub sql_type: String,
    /// The name of the base type (through one domain), e.g. `jsonb`, `bytea`, `int8`.
    pub base_type: String,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Has a default, an identity or a generated expression.
    pub has_default: bool,
}

impl Column {
    /// The quoted column name, for SQL.
    pub fn ident(&self) -> String {
        quote_ident(&self.name)
    }
}

/// A table found in the catalog.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// Its oid.
    pub oid: u32,
    /// The name as `regclass` prints it (schema-qualified and quoted when needed): safe to
    /// paste into SQL.
    pub name: String,
    /// Its schema, quoted.
    pub schema: String,
    /// Its columns in order.
    pub columns: Vec<Column>,
}

impl TableInfo {
    /// Finds `table` (`name`, `schema.name`, or a quoted name, as in SQL).
    pub async fn lookup(client: &Client, table: &str) -> Result<TableInfo> {
        let row = client
            .query_opt(
                "SELECT c.oid, c.oid::regclass::text, quote_ident(n.nspname) \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE c.oid = to_regclass($1::text) AND c.relkind IN ('r', 'p', 'v', 'f', 'm')",
                &[&table],
            )
            .await
            .map_err(|e| anyhow!("cannot look table `{table}` up: {}", describe(&e)))?;
        let Some(row) = row else {
            bail!("table `{table}` does not exist in this database (create it first, or fix the `table` parameter; names are case-sensitive inside double quotes)");
        };
        let oid: u32 = row.get(0);
        let columns = client
            .query(
                "SELECT a.attname::text, a.attnum, format_type(a.atttypid, a.atttypmod), \
                        bt.typname::text, a.attnotnull, \
                        (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') \
                 FROM pg_attribute a \
                 JOIN pg_type t ON t.oid = a.atttypid \
                 JOIN pg_type bt ON bt.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END \
                 WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped \
                 ORDER BY a.attnum",
                &[&oid],
            )
            .await
            .map_err(|e| anyhow!("cannot read the columns of `{table}`: {}", describe(&e)))?
            .into_iter()
            .map(|r| Column {
                name: r.get(0),
                num: r.get(1),
                sql_type: r.get(2),
                base_type: r.get(3),
                not_null: r.get(4),
                has_default: r.get(5),
            })
            .collect();
        Ok(TableInfo {
            oid,
            name: row.get(1),
            schema: row.get(2),
            columns,
        })
    }

    /// The column called `name`, or an error listing the columns there are.
    pub fn column(&self, name: &str, param: &str) -> Result<&Column> {
        self.columns.iter().find(|c| c.name == name).ok_or_else(|| {
            let names: Vec<&str> = self.columns.iter().map(|c| c.name.as_str()).collect();
            anyhow!(
                "table {} has no column `{name}` (set by the `{param}` parameter); its columns are: {}",
                self.name,
                names.join(", ")
            )
        })
    }

    /// Whether a unique index (or primary key) covers exactly `column`, which
    /// `ON CONFLICT (column)` needs.
    pub async fn has_unique_index_on(&self, client: &Client, column: &Column) -> Result<bool> {
        let row = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = $1 AND i.indisunique \
                 AND i.indnkeyatts = 1 AND i.indkey[0] = $2 AND i.indpred IS NULL AND i.indexprs IS NULL)",
                &[&self.oid, &column.num],
            )
            .await
            .map_err(|e| anyhow!("cannot read the indexes of {}: {}", self.name, describe(&e)))?;
        Ok(row.get(0))
    }
}
