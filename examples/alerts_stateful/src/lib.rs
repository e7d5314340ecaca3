//! The seed's stateful Alerts application: transactions keyed by user, a running total per
//! user, an alert when the total goes above +2000 or below -2000.
//!
//! Input payload: `user,amount` as text (amount is an integer, may be negative).
//! Output payload: `DepositAlert(user, total)` or `WithdrawalAlert(user, total)` as a text
//! line; the output key is the user.

pub mod feed;
pub mod print_sink;

use std::fmt;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use smol_str::SmolStr;

/// Name of the source connector the pipeline reads from.
pub const SOURCE: &str = "transactions";
/// Name of the sink connector the alerts go to.
pub const SINK: &str = "alerts";
/// Name of the state store in snapshots (source name + declaration index).
pub const STATE: &str = "transactions#0";

/// One transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The user it belongs to (the key). Names up to 23 bytes are stored inline: cloning
    /// the key and walking the state for a checkpoint touch no heap memory.
    pub user: SmolStr,
    /// Amount, negative for a withdrawal.
    pub amount: i64,
}

/// The per-user state: a running total.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransactionTotal {
    /// Sum of the user's transactions so far.
    pub total: i64,
}

/// What the application emits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Alert {
    /// The user's total went above 2000.
    DepositAlert(SmolStr, i64),
    /// The user's total went below -2000.
    WithdrawalAlert(SmolStr, i64),
}

impl fmt::Display for Alert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alert::DepositAlert(u, t) => write!(f, "DepositAlert({u}, {t})"),
            Alert::WithdrawalAlert(u, t) => write!(f, "WithdrawalAlert({u}, {t})"),
        }
    }
}

/// Parses `user,amount`.
pub fn decode_transaction(b: &[u8]) -> Result<Transaction, String> {
    let s = std::str::from_utf8(b).map_err(|_| "not UTF-8".to_string())?;
    let s = s.trim_end_matches(['\n', '\r']);
    let (user, amount) = s
        .split_once(',')
        .ok_or_else(|| format!("expected `user,amount`, got `{s}`"))?;
    let amount = amount
        .trim()
        .parse()
        .map_err(|_| format!("bad amount in `{s}`"))?;
    Ok(Transaction {
        user: SmolStr::new(user.trim()),
        amount,
    })
}

/// The state computation of the seed: add the amount, alert past +/-2000.
pub fn check_transaction_total(t: Transaction, state: &mut TransactionTotal) -> Option<Alert> {
    state.total += t.amount;
    if state.total > 2000 {
        Some(Alert::DepositAlert(t.user, state.total))
    } else if state.total < -2000 {
        Some(Alert::WithdrawalAlert(t.user, state.total))
    } else {
        None
    }
}

/// Encodes an alert: key = user, payload = the alert as a text line.
pub fn encode_alert(a: &Alert) -> (Bytes, Bytes) {
    let user = match a {
        Alert::DepositAlert(u, _) | Alert::WithdrawalAlert(u, _) => u,
    };
    (
        Bytes::copy_from_slice(user.as_bytes()),
        Bytes::from(format!("{a}\n")),
    )
}

/// Writes an alert into reused buffers (what [`encode_alert`] returns, without allocating).
pub fn write_alert(a: &Alert, out: &mut engine::OutBuf) {
    let (name, user, total): (&[u8], &str, i64) = match a {
        Alert::DepositAlert(u, t) => (b"DepositAlert(", u, *t),
        Alert::WithdrawalAlert(u, t) => (b"WithdrawalAlert(", u, *t),
    };
    out.key.extend_from_slice(user.as_bytes());
    out.payload.extend_from_slice(name);
    out.payload.extend_from_slice(user.as_bytes());
    out.payload.extend_from_slice(b", ");
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut v = total.unsigned_abs();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    if total < 0 {
        out.payload.push(b'-');
    }
    out.payload.extend_from_slice(&digits[i..]);
    out.payload.extend_from_slice(b")\n");
}

/// The application: one keyed, stateful pipeline from [`SOURCE`] to [`SINK`].
pub fn build_app(app: &mut engine::App) {
    app.pipeline(SOURCE)
        .decode(decode_transaction)
        .key_by(|t: &Transaction| t.user.clone())
        .state(check_transaction_total)
        .encode_with(write_alert)
        .to_sink(SINK);
}

/// The generator (like the seed's GenSource): transaction `i` (1-based) of a run with
/// `users` users and seed `seed`, deterministic so a replay regenerates the same bytes.
pub fn generated_transaction(seed: u64, users: u64, i: u64) -> Vec<u8> {
    let mut x = seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    let user = x % users.max(1);
    let amount = ((x >> 20) % 2001) as i64 - 1000;
    format!("user{user},{amount}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_semantics() {
        let mut s = TransactionTotal::default();
        let t = |a| Transaction {
            user: "bob".into(),
            amount: a,
        };
        assert_eq!(check_transaction_total(t(1500), &mut s), None);
        assert_eq!(
            check_transaction_total(t(600), &mut s),
            Some(Alert::DepositAlert("bob".into(), 2100))
        );
        assert_eq!(
            check_transaction_total(t(-5000), &mut s),
            Some(Alert::WithdrawalAlert("bob".into(), -2900))
        );
        assert_eq!(
            encode_alert(&Alert::WithdrawalAlert("bob".into(), -2900)).1,
            Bytes::from("WithdrawalAlert(bob, -2900)\n")
        );
        for a in [
            Alert::WithdrawalAlert("bob".into(), -2900),
            Alert::DepositAlert("al".into(), 2001),
            Alert::DepositAlert("z".into(), i64::MAX),
            Alert::WithdrawalAlert("z".into(), i64::MIN),
        ] {
            let mut out = engine::OutBuf::default();
            write_alert(&a, &mut out);
            let (k, p) = encode_alert(&a);
            assert_eq!((&out.key[..], &out.payload[..]), (&k[..], &p[..]));
        }
        assert_eq!(decode_transaction(b"alice,-12\n").unwrap().amount, -12);
        assert!(decode_transaction(b"nonsense").is_err());
        let g = generated_transaction(1, 10, 5);
        assert_eq!(g, generated_transaction(1, 10, 5));
        assert!(decode_transaction(&g).is_ok());
    }
}
