-- When each upload chunk was stored: the chunks of an upload whose job was
-- never created (the process stopped mid-upload) are deleted after a while.
ALTER TABLE herald_upload_chunks ADD COLUMN stored_at BIGINT NOT NULL DEFAULT 0;
