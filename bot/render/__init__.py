"""Block Kit rendering, one concern per module (design rule 7):

* `core`: Message, FileUpload, BlockError, the text helpers (escape, mentions, truncate, code, ...), the
  block builders and the one validator (limits, the total text budget, view mode). Imports no renderer.
* one renderer per domain, built from `core` (and from each other's line helpers, never in a cycle):
  `help` (help, error line, working ack), `activity` (sessions, lock waits, root blockers),
  `status`, `precheck` (with the risk review of bot/review_blocks.py), `approvals`, `watch` (alerts,
  `/migrate activity`, `/migrate watch`), `restore`, `backup`, `escalation` (levels, incident summary).

bot/blocks.py re-exports all of them for the callers written against the single module. This
package imports nothing itself, so importing one renderer loads only what it needs.
"""
