-- Federated evaluation of each round's global model (spec.evaluation): the example-weighted loss, the
-- examples counted and the metrics participants reported, as the close reply gave them (JSON text:
-- read whole for status, not queried by column; the metric names are the user's).

ALTER TABLE rounds ADD COLUMN evaluation TEXT;
