-- A participant's position in the session's list (its ``index`` on join), so a restarted coordinator
-- hands out the same indexes.

ALTER TABLE participants ADD COLUMN position INTEGER NOT NULL DEFAULT 0;
