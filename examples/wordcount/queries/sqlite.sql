-- name: insert
INSERT INTO word_counts (task_id, text) VALUES (:task_id, :text);

-- name: get
SELECT * FROM word_counts WHERE task_id = :task_id;

-- name: set_words
UPDATE word_counts SET words = :words WHERE task_id = :task_id;
