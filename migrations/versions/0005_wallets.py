"""Money: wallets, a double-entry ledger the database keeps honest, and idempotency keys.

Every movement is one ``ledger_transactions`` row (unique per idempotency key) and its
``postings``. Postgres, not only the code in ``core/money.py``, refuses what must never happen:
postings of a transaction that do not sum to zero per currency (checked at commit), an account
other than the world going below zero, a balance changed except by a posting, a posting or
transaction changed or deleted after the fact, a posting in another currency than its account.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from migrations.sql import drop_tables

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# One statement each: function bodies hold ';' line ends, which create_schema would split.
STATEMENTS = [
    """
    CREATE TABLE wallets (
        id text PRIMARY KEY CHECK (id ~ '^wal_[0-9a-f]{32}$'),
        merchant_id text NOT NULL REFERENCES merchants (id),
        currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
        status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'closed')),
        created_by text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (id, currency)
    )
    """,
    "CREATE INDEX wallets_by_merchant ON wallets (merchant_id, created_at)",
    # A wallet's account has the wallet's id; the world (money from or to outside Switchboard,
    # e.g. top-ups) is 'world:{currency}' and is the only account that may owe; escrow holdings
    # will be accounts of their own.
    """
    CREATE TABLE ledger_accounts (
        id text PRIMARY KEY,
        kind text NOT NULL CHECK (kind IN ('wallet', 'world', 'escrow')),
        wallet_id text UNIQUE,
        currency text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
        balance bigint NOT NULL DEFAULT 0,
        created_at timestamptz NOT NULL DEFAULT now(),
        UNIQUE (id, currency),
        FOREIGN KEY (wallet_id, currency) REFERENCES wallets (id, currency),
        CHECK ((kind = 'wallet') = (wallet_id IS NOT NULL) AND wallet_id IS NOT DISTINCT FROM
            CASE WHEN kind = 'wallet' THEN id END),
        CONSTRAINT ledger_accounts_balance_not_negative CHECK (kind = 'world' OR balance >= 0)
    )
    """,
    """
    CREATE TABLE ledger_transactions (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        idempotency_key text NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 512),
        kind text NOT NULL CHECK (kind ~ '^[a-z_]{1,32}$'),
        actor text NOT NULL,
        reason text,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp()
    )
    """,
    """
    CREATE TABLE postings (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        transaction_id bigint NOT NULL REFERENCES ledger_transactions (id),
        account_id text NOT NULL,
        currency text NOT NULL,
        amount bigint NOT NULL CHECK (amount <> 0),
        balance_after bigint NOT NULL DEFAULT 0,
        FOREIGN KEY (account_id, currency) REFERENCES ledger_accounts (id, currency)
    )
    """,
    "CREATE INDEX postings_by_account ON postings (account_id, id)",
    "CREATE INDEX postings_by_transaction ON postings (transaction_id)",
    # A posting moves its account's balance in the same transaction, and records the balance it
    # left: the balance column is the sum of the account's postings by construction, and the
    # CHECK on it refuses a posting that would overdraw.
    """
    CREATE FUNCTION ledger_apply_posting() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE ledger_accounts SET balance = balance + NEW.amount
        WHERE id = NEW.account_id
        RETURNING balance INTO NEW.balance_after;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'no ledger account %', NEW.account_id
                USING ERRCODE = 'foreign_key_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER postings_apply BEFORE INSERT ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_apply_posting()
    """,
    """
    CREATE FUNCTION ledger_balance_only_by_postings() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' AND NEW.balance <> 0 THEN
            RAISE EXCEPTION 'an account opens with a zero balance'
                USING ERRCODE = 'check_violation';
        END IF;
        IF TG_OP = 'UPDATE' AND NEW.balance IS DISTINCT FROM OLD.balance
            AND pg_trigger_depth() < 2 THEN
            RAISE EXCEPTION 'balance of % changes only through postings', OLD.id
                USING ERRCODE = 'check_violation';
        END IF;
        RETURN NEW;
    END $$
    """,
    """
    CREATE TRIGGER ledger_accounts_balance_by_postings BEFORE INSERT OR UPDATE
    ON ledger_accounts FOR EACH ROW EXECUTE FUNCTION ledger_balance_only_by_postings()
    """,
    # Checked at commit, once every posting of the transaction is in.
    """
    CREATE FUNCTION ledger_transaction_balanced() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        unbalanced text;
    BEGIN
        SELECT string_agg(currency || ' ' || total, ', ') INTO unbalanced
        FROM (SELECT currency, sum(amount) AS total FROM postings
              WHERE transaction_id = NEW.transaction_id
              GROUP BY currency HAVING sum(amount) <> 0) AS off;
        IF unbalanced IS NOT NULL THEN
            RAISE EXCEPTION 'ledger transaction % does not sum to zero: %',
                NEW.transaction_id, unbalanced
                USING ERRCODE = 'check_violation', CONSTRAINT = 'postings_balanced';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER postings_balanced AFTER INSERT ON postings
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_balanced()
    """,
    """
    CREATE FUNCTION ledger_transaction_has_postings() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF NOT EXISTS (SELECT 1 FROM postings WHERE transaction_id = NEW.id) THEN
            RAISE EXCEPTION 'ledger transaction % has no postings', NEW.id
                USING ERRCODE = 'check_violation', CONSTRAINT = 'ledger_transactions_postings';
        END IF;
        RETURN NULL;
    END $$
    """,
    """
    CREATE CONSTRAINT TRIGGER ledger_transactions_postings AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger_transaction_has_postings()
    """,
    """
    CREATE FUNCTION ledger_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '% rows are never changed or deleted', TG_TABLE_NAME
            USING ERRCODE = 'check_violation';
    END $$
    """,
    """
    CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON postings
    FOR EACH ROW EXECUTE FUNCTION ledger_append_only()
    """,
    """
    CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE
    ON ledger_transactions FOR EACH ROW EXECUTE FUNCTION ledger_append_only()
    """,
    # The api's Stripe-style idempotency keys (api/idempotency.py): the first response to a key,
    # replayed to repeats with the same fingerprint until expires_at (json, not jsonb: the
    # replay is byte for byte the first answer, keys in their order).
    """
    CREATE TABLE idempotency_keys (
        key text PRIMARY KEY CHECK (length(key) BETWEEN 1 AND 255),
        fingerprint bytea NOT NULL,
        method text NOT NULL,
        path text NOT NULL,
        caller text NOT NULL,
        token uuid NOT NULL,
        status text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'done')),
        response_status smallint,
        response_body json,
        created_at timestamptz NOT NULL DEFAULT now(),
        lease_until timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        CHECK ((status = 'done') = (response_status IS NOT NULL))
    )
    """,
    "CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at)",
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    drop_tables(["idempotency_keys", "postings", "ledger_transactions", "ledger_accounts"])
    drop_tables(["wallets"])
    for function in (
        "ledger_apply_posting",
        "ledger_balance_only_by_postings",
        "ledger_transaction_balanced",
        "ledger_transaction_has_postings",
        "ledger_append_only",
    ):
        op.execute(f"DROP FUNCTION IF EXISTS {function}()")
