"""Seed the Home Budget database with realistic expenses and incomes.

Works at revision 0001_expenses_incomes and every later one (it only writes the
columns 0001 creates). Deterministic for a given `rows`/`random_seed`.

    DATABASE_URL=postgresql://... python seed.py --rows 500

or, from Python:

    from seed import seed
    seed("postgresql://...", rows=500)   # -> {"expenses": 500, "incomes": 63}
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from datetime import date, timedelta
from decimal import Decimal

import psycopg

# (free-text category or None, description, typical amount range)
EXPENSE_KINDS: list[tuple[str | None, list[str], tuple[int, int]]] = [
    ("groceries", ["Whole Foods weekly shop", "Trader Joe's", "Costco run", "Supermarket top-up"], (15, 220)),
    (None, ["Groceries at Aldi", "Farmers market groceries"], (10, 90)),
    ("Rent", ["Monthly rent", "Rent - apartment 4B"], (1200, 2400)),
    (None, ["Electric bill", "Water bill", "Internet - fiber 1Gb", "Phone bill"], (25, 180)),
    ("transport", ["Uber to airport", "Metro card reload", "Fuel - Shell"], (5, 85)),
    (None, ["Parking downtown", "Train ticket", "Taxi home"], (4, 60)),
    ("Dining", ["Pizza night", "Sushi with friends", "Coffee and croissant"], (4, 120)),
    (None, ["Lunch at the office cafe", "Dinner - Italian restaurant", "Takeaway thai"], (8, 95)),
    (None, ["Pharmacy", "Dentist check-up", "Gym membership"], (10, 160)),
    (None, ["Netflix subscription", "Spotify family", "Cinema tickets", "Concert tickets"], (8, 140)),
    ("", ["Birthday gift for Sam", "Haircut", "Hardware store - paint"], (12, 75)),
]
INCOME_KINDS: list[tuple[str, str, tuple[int, int]]] = [
    ("Salary", "Monthly salary - Acme Corp", (4200, 5200)),
    ("Freelance", "Freelance invoice", (300, 1800)),
    ("Interest", "Savings account interest", (3, 40)),
    ("Refund", "Tax refund", (150, 900)),
    ("Sale", "Sold old bike", (80, 300)),
]


def _psycopg_dsn(dsn: str) -> str:
    for prefix in ("postgresql+psycopg://", "postgresql+psycopg2://", "postgres://"):
        if dsn.startswith(prefix):
            return "postgresql://" + dsn[len(prefix):]
    return dsn


def _money(rng: random.Random, low: int, high: int) -> Decimal:
    return Decimal(rng.uniform(low, high)).quantize(Decimal("0.01"))


def generate(rows: int, *, random_seed: int = 2024, end: date | None = None):
    """(expenses, incomes) as lists of tuples; incomes number about one per eight expenses."""
    rng = random.Random(random_seed)
    end = end or date.today()
    days = max(30, rows // 3)            # roughly three expenses a day
    expenses = []
    for _ in range(rows):
        category, descriptions, (low, high) = rng.choice(EXPENSE_KINDS)
        when = end - timedelta(days=rng.randrange(days))
        expenses.append((when, _money(rng, low, high), category, rng.choice(descriptions)))
    incomes = []
    for i in range(max(1, rows // 8)):
        source, description, (low, high) = INCOME_KINDS[0] if i % 3 == 0 else rng.choice(INCOME_KINDS)
        when = end - timedelta(days=rng.randrange(days))
        incomes.append((when, _money(rng, low, high), source, description))
    return expenses, incomes


def seed(dsn: str, rows: int = 200, *, random_seed: int = 2024) -> dict[str, int]:
    """Insert `rows` expenses and about rows/8 incomes in one transaction; returns the counts inserted."""
    if rows < 0:
        raise ValueError("rows must be >= 0")
    expenses, incomes = generate(rows, random_seed=random_seed)
    with psycopg.connect(_psycopg_dsn(dsn), application_name="home-budget/seed") as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY expenses (date, amount, category, description) FROM STDIN") as copy:
                for row in expenses:
                    copy.write_row(row)
            with cur.copy("COPY incomes (date, amount, source, description) FROM STDIN") as copy:
                for row in incomes:
                    copy.write_row(row)
    return {"expenses": len(expenses), "incomes": len(incomes)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200, help="number of expenses (default 200)")
    parser.add_argument("--seed", type=int, default=2024, help="random seed (default 2024)")
    args = parser.parse_args(argv)
    dsn = os.environ.get("DATABASE_URL")
    if not dsn:
        print("DATABASE_URL is not set", file=sys.stderr)
        return 2
    try:
        counts = seed(dsn, rows=args.rows, random_seed=args.seed)
    except psycopg.Error as exc:
        # first line only: never echo the DSN
        print(f"seed failed: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 1
    print(f"inserted {counts['expenses']} expenses and {counts['incomes']} incomes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
