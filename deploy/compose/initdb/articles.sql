-- The example's content table, streamed by wal2vec (wal2vec.yaml), with a few rows to embed.
-- The image's entrypoint runs this once, when the db-data volume is created.
CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE articles (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    title text NOT NULL,
    body text,
    author_id int
);

INSERT INTO articles (title, body, author_id) VALUES
    ('Logical replication', 'PostgreSQL streams committed changes from the write-ahead log to subscribers through replication slots.', 1),
    ('pgvector', 'pgvector adds vector types and nearest-neighbour indexes (HNSW, IVFFlat) to PostgreSQL.', 2),
    ('Embeddings', 'An embedding maps a text to a vector so that texts with similar meaning lie close together.', 1),
    ('Change data capture', 'CDC turns row changes into a stream, so other systems follow a database without polling it.', 3);
