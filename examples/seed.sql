-- Sample rows for the demo: a few users, inventory items and listings. One listing
-- waits for a moderator (pending_approval) and its owner has a phone for push: the
-- demo approves it (an email and a push) and replaces an item's photo (a Cloudinary
-- deletion), procqueue/sql/demo.sql's demo_story_* queries.
INSERT INTO auth.users (id, email) VALUES
    ('00000000-0000-4000-8000-000000000001', 'ayse@example.com'),
    ('00000000-0000-4000-8000-000000000002', 'mehmet@example.com')
ON CONFLICT DO NOTHING;

INSERT INTO public.push_tokens (user_id, token, platform) VALUES
    ('00000000-0000-4000-8000-000000000001', 'demo-phone-ayse', 'android')
ON CONFLICT DO NOTHING;

INSERT INTO public.inventory_items (user_id, name, category, description, condition,
                                    estimated_value, main_image_url, additional_image_urls)
SELECT '00000000-0000-4000-8000-000000000001',
       'Bisiklet ' || n, (ARRAY['sports', 'home', 'electronics'])[1 + n % 3],
       'Sample inventory item ' || n, 'used', 100 + n,
       'https://res.cloudinary.com/demo/image/upload/v1712345678/items/item_' || n || '.jpg',
       ARRAY['https://res.cloudinary.com/demo/image/upload/items/item_' || n || '_b.jpg']
FROM generate_series(1, 20) AS n;

INSERT INTO public.listings (user_id, title, description, category, budget, location, status,
                             main_image_url, inventory_item_id)
SELECT i.user_id, 'İlan: ' || i.name, i.description, i.category, i.estimated_value,
       (ARRAY['İstanbul', 'Ankara', 'İzmir'])[1 + (row_number() OVER ()) % 3],
       CASE i.name WHEN 'Bisiklet 1' THEN 'pending_approval' ELSE 'active' END,
       i.main_image_url, i.id
FROM public.inventory_items AS i;
