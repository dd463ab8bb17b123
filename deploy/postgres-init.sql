-- The service's job database beside MLflow's (compose.yaml); each service replica shares it.
CREATE DATABASE jobs OWNER layert2v;
