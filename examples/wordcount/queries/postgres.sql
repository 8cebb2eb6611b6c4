-- name: insert
INSERT INTO word_counts (task_id, text) VALUES (%(task_id)s, %(text)s);

-- name: get
SELECT * FROM word_counts WHERE task_id = %(task_id)s;

-- name: set_words
UPDATE word_counts SET words = %(words)s WHERE task_id = %(task_id)s;
