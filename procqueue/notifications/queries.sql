-- Named queries of the notifications feature (email and push), in the manner of Procrastinate's
-- sql/queries.sql: a block starts with "-- name: description"; {braced} names
-- are identifiers filled in with psycopg.sql; %(named)s are parameters.

-- notification_row: one row of the notifications table, for a notification:<channel> job
SELECT id::text AS id, recipient_user_id::text AS recipient, type, data
FROM {schema}.{table} WHERE id = %(id)s;

-- notification_recipient: a user's address book and locale, from auth.users (sql/notification_recipient.sql)
SELECT user_id, email, phone, locale FROM procqueue.notification_recipient(%(user_id)s);

-- notification_channel_enabled: whether a user takes a notification type on a channel
SELECT coalesce((
    SELECT enabled FROM procqueue.notification_preferences
    WHERE user_id = %(user_id)s AND channel = %(channel)s AND type IN (%(type)s, '*')
    ORDER BY type = '*' LIMIT 1
), true) AS enabled;

-- notification_done_targets: targets of a notification already delivered or skipped
SELECT target FROM procqueue.notification_deliveries
WHERE notification_id = %(notification_id)s AND channel = %(channel)s;

-- record_notification_delivery: remember one delivered (or skipped) target
INSERT INTO procqueue.notification_deliveries
    (notification_id, channel, target, status, recipient_user_id, notification_type, detail,
     job_id)
VALUES
    (%(notification_id)s, %(channel)s, %(target)s, %(status)s, %(recipient)s, %(type)s,
     %(detail)s, %(job_id)s)
ON CONFLICT (notification_id, channel, target) DO NOTHING;

-- notify: enqueue a notification without a row (procqueue.notify)
SELECT procqueue.notify(%(recipient)s, %(type)s, %(data)s, %(notification_id)s, %(channels)s);

-- push_tokens_of_user: the device tokens of one user
SELECT token FROM {schema}.{table}
WHERE user_id = %(user_id)s AND token IS NOT NULL AND token <> '' ORDER BY token;

-- delete_push_token: forget a device token FCM no longer accepts
DELETE FROM {schema}.{table} WHERE token = %(token)s;
