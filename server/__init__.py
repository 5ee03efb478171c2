"""The factory and fleet server: manufData, events, records, credentials, images, DDI."""
