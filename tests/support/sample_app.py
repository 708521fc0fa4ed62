"""The tests drive the same sample app as the console demo."""
from bot.sample_app import *  # noqa: F401,F403
from bot.sample_app import (ALEMBIC_ARGV, APP_DIR, REV_0001, REV_0002, REV_0003, REVISIONS, URL_ENV,  # noqa: F401
                            alembic, downgrade, sample_db_at, seed, upgrade)
